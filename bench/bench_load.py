"""How long a clinician waits for Loupe to show an image, per kind of file.

What is measured
----------------
For each kind of file, the Loupe column times the full path from a path on disk to a display
image: ``tools.study.open_study(path)`` (source resolution, header parse and validation, series
ordering, content id, decode and render of frame 0) followed by ``study.display(frame)`` for the
frame the clinician asked for. ``study.close()`` runs after each timed run, outside the timing.
The header-only row times ``tools.study.dicom.DicomFile(path, StudyLimits())`` instead.

The baseline column is the same work done with plain libraries in the same process, with no
windowing and no validation:

* DICOM: ``pydicom.dcmread(path)`` + ``ds.pixel_array`` (whole file), or
  ``pydicom.pixels.pixel_array(path, index=k)`` when only one frame is wanted. pydicom chooses
  its decoding plugin itself (GDCM first for JPEG 2000); Loupe asks for pylibjpeg-openjpeg on
  JPEG 2000, so part of those ratios is the choice of decoder.
* header only: ``pydicom.dcmread(path, stop_before_pixels=True)``.
* the 300-slice series: ``dcmread(..., stop_before_pixels=True)`` of every file, sort by the
  position along the slice normal, then ``dcmread`` + ``.pixel_array`` of the middle slice.
* PNG/JPEG: ``PIL.Image.open(path)`` + ``np.asarray(image)``.

The series is 300 copies of 693_UNCI.dcm (a 512 x 512 CT slice, ~0.5 MB, ~150 MB in all) in a
temporary folder, with distinct SOPInstanceUIDs, ImagePositionPatient z = i * 1.25 mm, one
SeriesInstanceUID, and InstanceNumbers shuffled with a fixed seed (the file names follow the
InstanceNumber, so folder order is not slice order). The PNG (1024 x 1024, 8- and 16-bit grey)
and JPEG (512 x 512, 8-bit grey, quality 90) images are synthetic phantoms written with Pillow
into the same temporary folder.

How to read it
--------------
Every run is timed with ``time.perf_counter`` after one untimed warm-up run (imports, plugin
discovery and the OS file cache are therefore warm: these are repeat-open times, not cold
starts). "median" is the median over ``runs`` runs, "min" the fastest run; milliseconds.
``ratio`` = Loupe median / baseline median: above 1 is what Loupe's extra work costs (HU
conversion, windowing to uint8, validation, hashing the files for the study id, decoding
frame 0 to prove the study is readable), below 1 means Loupe skips work the naive approach
does (one frame instead of all of them). The "all 120 frames" row compares the same Loupe
frame-77 time against decoding every frame with ``ds.pixel_array``: that is what a loader
without per-frame decoding would make the clinician wait for.

Run with ``.venv/bin/python bench/bench_load.py [--runs N]`` or ``make bench``; ``--runs``
sets the number of timed runs for every kind (default 7; 3 for the 300-slice series and for
the all-120-frames baseline, which take seconds per run). The ``runs`` column gives the count,
as ``Loupe/baseline`` when the two differ.
The whole benchmark takes well under two minutes on two cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import generate_uid

# Runnable as a script from anywhere: make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.study import StudyLimits, open_study  # noqa: E402
from tools.study.dicom import DicomFile  # noqa: E402

DEFAULT_RUNS = 7
SERIES_RUNS = 3  # also used for the all-120-frames baseline (~3 s a run)
SERIES_SLICES = 300
SERIES_SPACING_MM = 1.25
SEED = 20240607
MULTIFRAME_INDEX = 77


@dataclass
class Timing:
    runs_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def best(self) -> float:
        return min(self.runs_ms)


@dataclass
class Row:
    kind: str
    file: str
    loupe: Timing | None
    baseline: Timing | None
    note: str = ""


def measure(work: Callable[[], object], runs: int) -> Timing:
    """One untimed warm-up, then ``runs`` timed calls of ``work``.

    Whatever ``work`` returns is closed (if it has ``close``) after the clock stops, so that
    releasing a study is not counted as load time but still happens between runs.
    """
    _finish(work())
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - start
        _finish(result)
        times.append(elapsed * 1000.0)
    return Timing(times)


def _finish(result: object) -> None:
    close = getattr(result, "close", None)
    if callable(close):
        close()


def testdata_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        raise SystemExit(f"bench: pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


# -- the work being timed ---------------------------------------------------------------------
def loupe_open(path: Path | str, frame: int = 0) -> Callable[[], object]:
    def work():
        study = open_study(path)
        try:
            study.display(frame)
        except BaseException:
            study.close()
            raise
        return study
    return work


def pydicom_full(path: Path) -> Callable[[], object]:
    def work():
        return pydicom.dcmread(path).pixel_array
    return work


def pydicom_frame(path: Path, index: int) -> Callable[[], object]:
    def work():
        return pixel_array(path, index=index)
    return work


def pil_array(path: Path) -> Callable[[], object]:
    def work():
        with Image.open(path) as image:
            return np.asarray(image)
    return work


def slice_position(ds: pydicom.Dataset) -> float:
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return float(normal @ np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64))


def pydicom_series(folder: Path) -> Callable[[], object]:
    def work():
        paths = sorted(p for p in folder.iterdir() if p.is_file())
        headers = [(pydicom.dcmread(p, stop_before_pixels=True), p) for p in paths]
        headers.sort(key=lambda pair: slice_position(pair[0]))
        return pydicom.dcmread(headers[len(headers) // 2][1]).pixel_array
    return work


# -- synthetic inputs -------------------------------------------------------------------------
def write_series(source: Path, folder: Path, count: int, spacing: float, seed: int) -> None:
    template = pydicom.dcmread(source)
    x, y = (float(v) for v in template.ImagePositionPatient[:2])
    series_uid = generate_uid(entropy_srcs=["loupe-bench-series", str(seed)])
    numbers = list(range(1, count + 1))
    random.Random(seed).shuffle(numbers)
    for i in range(count):
        sop_uid = generate_uid(entropy_srcs=["loupe-bench-slice", str(seed), str(i)])
        template.SOPInstanceUID = sop_uid
        template.file_meta.MediaStorageSOPInstanceUID = sop_uid
        template.SeriesInstanceUID = series_uid
        template.ImagePositionPatient = [x, y, round(i * spacing, 4)]
        template.SliceLocation = round(i * spacing, 4)
        template.InstanceNumber = numbers[i]
        # Named by InstanceNumber, without extension, as PACS exports often are.
        template.save_as(folder / f"IM{numbers[i]:04d}", enforce_file_format=True)


def phantom(size: int, seed: int) -> np.ndarray:
    """A smooth body-like disc with a few round structures and mild noise, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = np.where(xx**2 / 0.18 + yy**2 / 0.12 < 1, 0.45, 0.02).astype(np.float32)
    for _ in range(12):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        radius, level = rng.uniform(0.02, 0.08), rng.uniform(-0.3, 0.5)
        image += level * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def write_rasters(folder: Path) -> dict[str, Path]:
    paths = {"png8": folder / "grey1024.png", "png16": folder / "grey1024_16bit.png",
             "jpeg": folder / "grey512.jpg"}
    big = phantom(1024, SEED)
    Image.fromarray(np.rint(big * 255).astype(np.uint8), mode="L").save(paths["png8"])
    Image.fromarray(np.rint(big * 4095).astype(np.uint16)).save(paths["png16"])  # 12 bits in 16
    small = phantom(512, SEED + 1)
    Image.fromarray(np.rint(small * 255).astype(np.uint8), mode="L").save(paths["jpeg"], quality=90)
    return paths


# -- output -----------------------------------------------------------------------------------
def _ms(timing: Timing | None) -> str:
    if timing is None:
        return "—"
    return f"{timing.median:.1f} (min {timing.best:.1f})"


def _ratio(row: Row) -> str:
    if row.loupe is None or row.baseline is None or row.baseline.median <= 0:
        return "—"
    return f"{row.loupe.median / row.baseline.median:.2f}×"


def _runs(row: Row) -> str:
    counts = [len(t.runs_ms) for t in (row.loupe, row.baseline) if t is not None]
    return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))


def print_table(rows: list[Row]) -> None:
    print("| kind | file | Loupe median ms | baseline median ms | ratio | runs |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row.kind} | {row.file} | {_ms(row.loupe)} | {_ms(row.baseline)} | "
              f"{_ratio(row)} | {_runs(row)} |")
    notes = [row.note for row in rows if row.note]
    if notes:
        print()
        for note in notes:
            print(f"- {note}")


def environment() -> str:
    versions = [f"Python {platform.python_version()}", f"pydicom {pydicom.__version__}",
                f"numpy {np.__version__}", f"Pillow {PIL.__version__}"]
    return f"{', '.join(versions)}; {os.cpu_count()} CPUs; {platform.machine()} {platform.system()}"


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=None,
                        help=f"timed runs per kind (default {DEFAULT_RUNS}; {SERIES_RUNS} for the "
                             f"{SERIES_SLICES}-slice series)")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = args.runs or DEFAULT_RUNS
    series_runs = args.runs or SERIES_RUNS

    started = time.perf_counter()
    ct_small = testdata_file("CT_small.dcm")
    ct_512 = testdata_file("693_UNCI.dcm")
    ct_j2k = testdata_file("693_J2KI.dcm")
    cr_unc = testdata_file("RG1_UNCI.dcm")
    cr_j2k = testdata_file("RG1_J2KR.dcm")
    us_multi = testdata_file("color3d_jpeg_baseline.dcm")
    limits = StudyLimits()

    rows: list[Row] = []

    def progress(label: str) -> None:
        print(f"  timing {label} ...", file=sys.stderr, flush=True)

    progress("header only")
    rows.append(Row(
        "header only (parse + validate)", ct_small.name,
        measure(lambda: DicomFile(ct_small, limits), runs),
        measure(lambda: pydicom.dcmread(ct_small, stop_before_pixels=True), runs),
        note="header only: Loupe = DicomFile(path, StudyLimits()); baseline = "
             "dcmread(stop_before_pixels=True).",
    ))

    for kind, path in (("CT 512² uncompressed", ct_512), ("CT 512² JPEG 2000", ct_j2k),
                       ("CR 1955×1841 uncompressed", cr_unc),
                       ("CR 1955×1841 JPEG 2000 lossless", cr_j2k)):
        progress(kind)
        rows.append(Row(kind, path.name, measure(loupe_open(path), runs),
                        measure(pydicom_full(path), runs)))

    progress("multi-frame")
    loupe_frame = measure(loupe_open(us_multi, MULTIFRAME_INDEX), runs)
    rows.append(Row(f"US 120-frame JPEG, frame {MULTIFRAME_INDEX}", us_multi.name, loupe_frame,
                    measure(pydicom_frame(us_multi, MULTIFRAME_INDEX), runs),
                    note=f"multi-frame: Loupe decodes frame 0 at open, then frame {MULTIFRAME_INDEX}; "
                         f"the first baseline is pixel_array(path, index={MULTIFRAME_INDEX}) alone."))
    rows.append(Row("… vs baseline decoding all 120 frames", us_multi.name, loupe_frame,
                    measure(pydicom_full(us_multi), series_runs),
                    note="all 120 frames: same Loupe timing, baseline = dcmread(path).pixel_array "
                         "(every frame decoded)."))

    with tempfile.TemporaryDirectory(prefix="loupe-bench-") as tmp:
        tmp_path = Path(tmp)
        series = tmp_path / "series"
        series.mkdir()
        progress(f"writing {SERIES_SLICES}-slice series")
        write_series(ct_512, series, SERIES_SLICES, SERIES_SPACING_MM, SEED)
        progress(f"{SERIES_SLICES}-slice series")
        middle = SERIES_SLICES // 2
        rows.append(Row(f"series of {SERIES_SLICES} CT 512² slices, middle slice",
                        f"{SERIES_SLICES} × {ct_512.name}",
                        measure(loupe_open(series, middle), series_runs),
                        measure(pydicom_series(series), series_runs),
                        note=f"series: Loupe = open_study(folder) (reads all {SERIES_SLICES} headers, "
                             "orders by position, hashes every file for the study id, renders slice 0) "
                             f"+ display({middle}); baseline = all headers + sort + decode of slice "
                             f"{middle}."))

        rasters = write_rasters(tmp_path)
        for kind, key in (("PNG 1024² 8-bit grey", "png8"), ("PNG 1024² 16-bit grey", "png16"),
                          ("JPEG 512² 8-bit grey", "jpeg")):
            progress(kind)
            path = rasters[key]
            rows.append(Row(kind, f"{path.name} (synthetic)", measure(loupe_open(path), runs),
                            measure(pil_array(path), runs)))

    print()
    print(f"Loupe load times (open_study + display) vs plain pydicom / Pillow — {environment()}")
    print()
    print_table(rows)
    print()
    print(f"Medians over the given runs after one warm-up; min in brackets; ratio = Loupe / baseline. "
          f"Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
