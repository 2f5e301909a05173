"""Latency of the imaging tools per image size: what a clinician waits for in ``loupe analyze``.

For each image, every tool runs through ``agent.toolbox.run_tool`` as the agent calls it:
load_study, detect_anomalies, verify_coordinates (one box_2d proposal around the top
finding), fit_gaussian (the findings ``loupe analyze`` measures: those at the anomaly threshold and the
top three), render_overlay (as ``loupe analyze`` renders: annotated, heatmap
and comparison with every finding; a zoomed crop and a statistics panel for each finding at the
anomaly threshold, else for the top one), and "analyze" = the sum of the last four (detect + verify + fit
+ render, the issue's latency target; loading is reported apart). Medians over ``--runs`` runs
after one warm-up; the baseline row per image is a bare ``scipy.ndimage.gaussian_filter`` of
the frame (σ = 2), a fixed unit of work measured in the same process so that ratios are
comparable across machines. A second table gives the same medians in CPU time of this process
(``time.process_time``): on a machine shared with other CPU-heavy work, wall-clock times swing
with the load, while the CPU time of the (mostly single-threaded) tools stays comparable
between runs.

render_overlay keeps rasterised strings for the next figure (orientation letters, legends,
axis titles recur). Every run repeats the same image, so by default that cache is emptied
before each run and every run pays for its text as the first analysis of a new study would;
``--warm-text`` keeps it, as in a session that has already drawn a few studies.

Run: ``.venv/bin/python bench/bench_tools.py [--runs N] [--warm-text]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.analysis import FIGURE_LAYERS, PER_FINDING_LAYERS, closer_ids, measured_ids  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from agent.toolbox import new_context, run_tool  # noqa: E402
from tools.coordinates import SentImage, px_to_box_2d  # noqa: E402
from tools.render.style import clear_text_cache  # noqa: E402

EVAL = ROOT.parent / "shared" / "data" / "eval"
TOOLS = ("load_study", "detect_anomalies", "verify_coordinates", "fit_gaussian", "render_overlay")


def _figures(ctx, closer: list[str]) -> None:
    """The figures ``loupe analyze`` renders: every layer, and crops and panels for ``closer``."""
    run_tool(ctx, "render_overlay", {"layers": FIGURE_LAYERS})
    if closer:
        run_tool(ctx, "render_overlay", {"layers": PER_FINDING_LAYERS, "finding_ids": closer})


def _images(folder: Path) -> list[tuple[str, Path, str]]:
    cxr = EVAL / "nih_cxr14" / "00010103_014.png"
    big = folder / "cxr_2048.png"
    Image.open(cxr).convert("L").resize((2048, 2048), Image.Resampling.BICUBIC).save(big)
    return [
        ("MR 512² (JPEG)", EVAL / "figshare_brain_mri" / "glioma_2294.jpg", "MR"),
        ("CT 512² (DICOM)", EVAL / "lidc_ct" / "LIDC-IDRI-0002" / "z-0094.50.dcm", "CT"),
        ("US ~560×460 (PNG)", EVAL / "busi" / "benign_030.png", "US"),
        ("DX 1024² (PNG)", cxr, "DX"),
        ("DX 2048² (PNG, upscaled)", big, "DX"),
    ]


def _one_run(path: Path, modality: str, warm_text: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """Wall-clock and CPU seconds per tool for one fresh session."""
    if not warm_text:
        clear_text_cache()
    ctx = new_context(LoupeSettings())
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name: str, call: Callable[[], object]) -> object:
        start, start_cpu = time.perf_counter(), time.process_time()
        result = call()
        times[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        return result

    try:
        loaded = timed("load_study", lambda: run_tool(ctx, "load_study", {"path": str(path), "modality": modality}))
        detected = timed("detect_anomalies", lambda: run_tool(ctx, "detect_anomalies", {})).output
        summary = loaded.output.summary
        top = detected.findings[0].bbox_px if detected.findings else None
        sent = SentImage.fit_long_side(summary.columns, summary.rows, ctx.model_image_max_side)
        box_2d = px_to_box_2d(top, sent) if top else [400, 400, 600, 600]
        timed("verify_coordinates", lambda: run_tool(ctx, "verify_coordinates", {"box_2d": box_2d}))
        measured = measured_ids(detected.findings, 0, detected.threshold)
        timed("fit_gaussian", lambda: run_tool(ctx, "fit_gaussian", {"finding_ids": measured}))
        timed("render_overlay", lambda: _figures(ctx, closer_ids(detected.findings, 0, detected.threshold)))
    finally:
        ctx.close()
    for measured in (times, cpu):
        measured["analyze"] = sum(measured[t] for t in TOOLS[1:])
    return times, cpu


def _baseline(path: Path) -> float:
    image = np.asarray(Image.open(path).convert("F")) if path.suffix != ".dcm" else None
    if image is None:
        from tools.study import open_study

        with open_study(path) as study:
            image = np.asarray(study.physical(0))
    start = time.perf_counter()
    ndi.gaussian_filter(image, 2.0)
    return time.perf_counter() - start


def _table(title: str, rows: list[tuple[str, dict[str, float], float]]) -> None:
    print(f"\n{title}\n")
    print("| image | " + " | ".join(f"{t} ms" for t in (*TOOLS, "analyze")) + " | baseline ms | analyze / baseline |")
    print("|---" * (len(TOOLS) + 4) + "|")
    for label, medians, baseline in rows:
        cells = " | ".join(f"{medians[t] * 1000:.0f}" for t in (*TOOLS, "analyze"))
        print(f"| {label} | {cells} | {baseline * 1000:.1f} | {medians['analyze'] / baseline:.0f}× |")


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(r[name] for r in runs) for name in (*TOOLS, "analyze")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warm-text", action="store_true",
                        help="keep render_overlay's text cache between runs (default: empty it before each)")
    args = parser.parse_args()
    wall_rows, cpu_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        for label, path, modality in _images(Path(folder)):
            print(f"  timing {label} ...", file=sys.stderr)
            _one_run(path, modality)  # warm-up
            runs = [_one_run(path, modality, args.warm_text) for _ in range(args.runs)]
            baseline = statistics.median(_baseline(path) for _ in range(args.runs))
            wall_rows.append((label, _medians([wall for wall, _ in runs]), baseline))
            cpu_rows.append((label, _medians([cpu for _, cpu in runs]), baseline))
    text = "text cache kept" if args.warm_text else "text cache emptied before each run"
    what = f"median of {args.runs} runs after a warm-up, {text} (analyze = detect + verify + fit + render)"
    _table(f"Tool latency, {what}", wall_rows)
    _table(f"CPU time of this process, {what}; baseline in wall-clock time as above", cpu_rows)


if __name__ == "__main__":
    main()
