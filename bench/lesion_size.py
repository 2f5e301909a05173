"""Compare segmentation methods for lesion sizes on a manifest, as ``loupe eval`` scores sizes.

Every marked lesion (not LIDC's <3 mm point marks) is segmented from the reader's centre alone
on the detector's working image, by each of four scikit-image methods, and its long axis (the
maximum Feret diameter, ``tools.measure.diameters``) is compared with the reader box's long side:
the median ratio and the share within ±25 %, per modality family, in-sample (each method's best
setting on all lesions) and k-fold cross-validated (the setting chosen on the other folds, as
``agent.evaluation.sizes`` does). All four share step 1 of ``tools.measure.segmentation`` (the
blob's radius r from the Laplacian of Gaussian at the centre) and the clean-up (holes filled,
an opening of ``opening`` × the equivalent radius, the part at the centre kept):

- **watershed** — Loupe's method (``tools.measure.segmentation``);
- **region growing** — ``skimage.segmentation.flood`` from the centre on the polarity-signed
  image (values above the lesion's level count as the lesion), the tolerance stepped from 1 % to
  100 % of the seed-to-background range in a window of 4 r; the region whose outline has the
  strongest median gradient, before any region reaches the window's edge; tuned: the opening;
- **Chan–Vese** — ``morphological_chan_vese`` in a window of 2.5 r, started from a disk of r;
  tuned: the iterations;
- **geodesic active contour** — ``morphological_geodesic_active_contour`` on the inverse
  Gaussian gradient, a disk of r/2 inflating (balloon +1) in a window of 3 r; tuned: the iterations.

On the dev set (5 folds; median ratio / share within ±25 %; ms per lesion and setting on 2
shared cores; a lesion outside the detector's competence, the abdominal MR, counts as a miss
here, where ``loupe eval`` reports the Gaussian's FWHM instead)::

    method                   MR (46)      CT (17)      DX (37)      US (30)      ms
                             in / CV      in / CV      in / CV      in / CV
    watershed                1.02 .59     0.77 .53     0.84 .38     1.00 .70     61
                             1.02 .59     0.77 .53     0.84 .38     1.00 .70
    region growing (flood)   0.97 .46     0.86 .71     0.24 .03     0.81 .53    110
                             0.97 .41     0.85 .71     0.24 .03     0.82 .47
    Chan–Vese                1.03 .57     0.80 .59     0.96 .32     0.77 .43    133
                             1.03 .57     0.80 .59     0.96 .32     0.77 .33
    geodesic active contour  1.00 .52     0.53 .06     1.15 .41     0.94 .43    387
                             1.00 .52     0.53 .06     1.15 .41     0.94 .43

The watershed is the best or close to it on every family and the fastest; region growing is
better on the two CT nodules (it takes in their ground-glass rim) but leaks on radiographs and
ultrasound; Chan–Vese and geodesic active contours need an iteration count that suits one
lesion size and not another.

Run: ``.venv/bin/python bench/lesion_size.py [MANIFEST.csv] [--folds K]`` (about half an hour
on 2 cores, mostly the active contours).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import segmentation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.crossval import fold_of  # noqa: E402
from agent.evaluation.manifest import SMALL_NODULE, read_manifest  # noqa: E402
from tools.detection.scoring import modality_family  # noqa: E402
from tools.detection.working import WorkingImage, prepare_study_frame  # noqa: E402
from tools.measure.diameters import lesion_diameters  # noqa: E402
from tools.measure.segmentation import (SHIPPED, SegmentationSettings, _cleaned, blob_radius,  # noqa: E402
                                        segment_lesion)
from tools.study import StudyLimits, open_study  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "eval" / "manifest.csv"
TOLERANCE = 0.25

Segmenter = Callable[[WorkingImage, float, float, float, object], tuple[np.ndarray, tuple[int, int]] | None]


def _window(work: WorkingImage, x: float, y: float, reach: int) -> tuple[np.ndarray, tuple[int, int], float, float]:
    image = work.evidence_image
    x0, y0 = max(0, round(x) - reach), max(0, round(y) - reach)
    x1, y1 = min(image.shape[1], round(x) + reach + 1), min(image.shape[0], round(y) + reach + 1)
    return image[y0:y1, x0:x1].astype(np.float64), (x0, y0), x - x0, y - y0


def _disk(shape: tuple[int, int], cx: float, cy: float, radius: float) -> np.ndarray:
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    return (columns - cx) ** 2 + (rows - cy) ** 2 <= radius * radius


def watershed(work, x, y, radius, setting):
    region = segment_lesion(work, work.to_native(x, y), setting)
    return None if region is None else (region.mask, region.offset)


def region_growing(work, x, y, radius, opening):
    window, offset, cx, cy = _window(work, x, y, math.ceil(4 * radius) + 3)
    signed = work.sign * ndi.gaussian_filter(window, 1.0)
    gradient = ndi.gaussian_gradient_magnitude(window, 1.0)
    row, column = min(max(round(cy), 0), window.shape[0] - 1), min(max(round(cx), 0), window.shape[1] - 1)
    level = float(np.median(signed[max(0, row - 1):row + 2, max(0, column - 1):column + 2]))
    low = float(np.percentile(signed, 1))
    if level <= low:
        return None
    clipped = np.minimum(signed, level)  # anything brighter than the lesion's level is lesion
    best = None
    for fraction in np.geomspace(0.01, 1.0, 40)[:-1]:
        grown = segmentation.flood(clipped, (row, column), tolerance=fraction * (level - low))
        if grown[0].any() or grown[-1].any() or grown[:, 0].any() or grown[:, -1].any():
            break  # it reached the window's edge: this and every lower level leak
        region = _cleaned(grown, cx, cy, opening)
        if region is None or np.count_nonzero(region) < 4:
            continue
        edge = float(np.median(gradient[region & ~ndi.binary_erosion(region)]))
        if best is None or edge > best[0]:
            best = (edge, region)
    return None if best is None else (best[1], offset)


def chan_vese(work, x, y, radius, iterations):
    window, offset, cx, cy = _window(work, x, y, math.ceil(2.5 * radius) + 3)
    signed = work.sign * window
    level_set = segmentation.morphological_chan_vese(signed, iterations, init_level_set=_disk(window.shape, cx, cy,
                                                                                             max(radius, 2.0)))
    phase = level_set.astype(bool)
    # The two phases are unordered: the lesion is the one of its polarity.
    if phase.any() and (~phase).any() and signed[phase].mean() < signed[~phase].mean():
        phase = ~phase
    region = _cleaned(phase, cx, cy, 0.0)
    return None if region is None else (region, offset)


def geodesic_active_contour(work, x, y, radius, iterations):
    window, offset, cx, cy = _window(work, x, y, math.ceil(3 * radius) + 3)
    span = max(float(window.max() - window.min()), 1e-6)
    edges = segmentation.inverse_gaussian_gradient(window / span, alpha=100, sigma=1.5)
    level_set = segmentation.morphological_geodesic_active_contour(
        edges, iterations, init_level_set=_disk(window.shape, cx, cy, max(radius / 2, 2.0)), smoothing=1,
        balloon=1, threshold="auto")
    region = _cleaned(level_set.astype(bool), cx, cy, 0.0)
    return None if region is None else (region, offset)


METHODS: dict[str, tuple[Segmenter, Sequence[object]]] = {
    "watershed": (watershed, tuple(SegmentationSettings(opening=o, edge_fraction=e)
                                   for e in (1.0, 0.8) for o in (0.0, 0.15, 0.3))),
    "region growing": (region_growing, (0.0, 0.15, 0.3)),
    "Chan–Vese": (chan_vese, (15, 40, 100)),
    "geodesic active contour": (geodesic_active_contour, (50, 150)),
}


@dataclass
class Lesion:
    path: Path
    dataset: str
    family: str
    reader_long_px: float
    #: method -> setting -> long axis in native px (0 when nothing was segmented).
    longs: dict[str, dict[object, float]]


def measure(manifest: Path, limits: StudyLimits) -> tuple[list[Lesion], dict[str, float], list]:
    images = read_manifest(manifest)
    lesions, seconds = [], defaultdict(float)
    for image in images:
        marked = [lesion for lesion in image.lesions if lesion.label != SMALL_NODULE]
        if not marked:
            continue
        with open_study(image.path, limits=limits, modality=image.modality) as study:
            work = prepare_study_frame(study, 0)
        for lesion in marked:
            x, y = work.to_working(*lesion.center)
            radius = blob_radius(work.evidence_image, x, y, work.polarity)
            longs: dict[str, dict[object, float]] = {}
            for name, (segment, settings) in METHODS.items():
                longs[name] = {}
                for setting in settings:
                    started = time.perf_counter()
                    found = None if work.outside is not None else segment(work, x, y, radius, setting)
                    seconds[name] += time.perf_counter() - started
                    diameters = None if found is None else lesion_diameters(found[0], scale=work.scale,
                                                                            offset=found[1])
                    longs[name][setting] = 0.0 if diameters is None else diameters.long_px
            lesions.append(Lesion(image.path, image.dataset, modality_family(image.modality),
                                  max(lesion.box.width, lesion.box.height), longs))
    return lesions, seconds, images


def _figures(members: Sequence[Lesion], method: str, setting: object) -> tuple[float, float]:
    ratios = [lesion.longs[method][setting] / lesion.reader_long_px for lesion in members]
    return statistics.fmean(abs(r - 1) <= TOLERANCE for r in ratios), statistics.median(ratios)


def _best(members: Sequence[Lesion], method: str) -> object:
    def quality(setting):
        within, median = _figures(members, method, setting)
        return within, -abs(math.log(median)) if median > 0 else -math.inf
    return max(METHODS[method][1], key=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", nargs="?", type=Path, default=DEV)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    lesions, seconds, images = measure(args.manifest, StudyLimits())
    folds = fold_of(images, args.folds)
    per_setting = {name: len(lesions) * len(settings) for name, (_, settings) in METHODS.items()}
    print("| method | family | lesions | in-sample median | in-sample within ±25 % | CV median | CV within ±25 % | "
          "ms per lesion and setting |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in METHODS:
        for family in ("MR", "CT", "DX", "US"):
            members = [lesion for lesion in lesions if lesion.family == family]
            within, median = _figures(members, name, _best(members, name))
            held = []
            for fold in range(args.folds):
                chosen = _best([m for m in members if folds[m.path] != fold], name)
                held += [m.longs[name][chosen] / m.reader_long_px for m in members if folds[m.path] == fold]
            cv_within = statistics.fmean(abs(r - 1) <= TOLERANCE for r in held)
            print(f"| {name} | {family} | {len(members)} | {median:.2f} | {within:.2f} | "
                  f"{statistics.median(held):.2f} | {cv_within:.2f} | "
                  f"{1000 * seconds[name] / per_setting[name]:.0f} |")
    shipped = ", ".join(f"{family}: {settings.describe()}" for family, settings in SHIPPED.items())
    print(f"\nShipped watershed settings: {shipped}.")


if __name__ == "__main__":
    main()
