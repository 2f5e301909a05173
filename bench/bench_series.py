"""CPU cost of the classical detector's whole-series search, per 512² slice (issue 26).

For each CT series (the two LIDC series of the dev set and the bundled sample), three things are
timed, on frames already decoded so that only detection counts:

- the tool: ``detect_anomalies`` with ``all_frames=True`` and its default ``max_findings`` in a
  fresh session (the shown frame's analysis, which the session keeps for verify and fit, and the
  search of every slice): "series CPU ms", and per slice scaled to a 512² slice by pixel count;
- the search alone with ten findings (``detect_volume(study, limit=10)``), per 512² slice;
- a single frame (``ClassicalDetector.detect`` on the middle slice, five centres fitted).

Medians over ``--runs`` runs after one warm-up, in CPU time of this process
(``time.process_time``, every thread): on a machine shared with other work, wall-clock times
swing with the load. The baseline row is a bare ``scipy.ndimage.gaussian_filter`` (σ = 2) of a
512² float32 image, a fixed unit of work measured in the same process, so that the ratio
per slice / baseline is comparable across machines.

Run: ``.venv/bin/python bench/bench_series.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.settings import LoupeSettings  # noqa: E402
from agent.toolbox import new_context, run_tool  # noqa: E402
from tools.detection.detector import ClassicalDetector, detect_volume  # noqa: E402
from tools.study import Study, open_study  # noqa: E402

EVAL = ROOT.parent / "shared" / "data" / "eval"
SERIES = (
    ("LIDC-IDRI-0002 (dev)", EVAL / "lidc_ct" / "LIDC-IDRI-0002"),
    ("LIDC-IDRI-0003 (dev)", EVAL / "lidc_ct" / "LIDC-IDRI-0003"),
    ("lidc-idri-0003 (sample)", ROOT / "agent" / "sample_data" / "lidc-idri-0003"),
)
SLICE_PIXELS = 512 * 512


def _cpu_median(call: Callable[[], object], runs: int) -> float:
    """Median CPU seconds of ``call`` over ``runs`` runs, after one warm-up."""
    call()
    times = []
    for _ in range(runs):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _baseline(runs: int) -> float:
    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    return _cpu_median(lambda: ndi.gaussian_filter(image, 2.0), max(runs, 20))


def _decoded(study: Study) -> Study:
    for frame in range(study.frame_count):
        study.physical(frame)
        study.coloured(frame)
    return study


def _tool_seconds(folder: Path, runs: int) -> float:
    """Median CPU seconds of ``detect_anomalies`` (all frames) in a fresh session, frames decoded."""
    def one() -> float:
        ctx = new_context(LoupeSettings())
        try:
            run_tool(ctx, "load_study", {"path": str(folder)})
            _decoded(ctx.view().study)
            start = time.process_time()
            result = run_tool(ctx, "detect_anomalies", {"all_frames": True})
            spent = time.process_time() - start
            assert result.output is not None, result
            return spent
        finally:
            ctx.close()

    one()
    return statistics.median(one() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    baseline = _baseline(args.runs)
    print("| series | slices | series CPU ms (tool, all frames) | CPU ms per 512² slice | search alone, "
          "10 findings, per 512² slice | single frame CPU ms | per slice / baseline |")
    print("|---|---|---|---|---|---|---|")
    for label, folder in SERIES:
        print(f"  timing {label} ...", file=sys.stderr)
        tool = _tool_seconds(folder, args.runs)
        with open_study(folder) as study:
            frames = _decoded(study).frame_count
            rows, cols = study.physical(0).shape[:2]
            search = _cpu_median(lambda: detect_volume(study, limit=10), args.runs)
            single = _cpu_median(lambda: ClassicalDetector().detect(study, frames // 2), args.runs)
        unit = SLICE_PIXELS / (rows * cols) / frames  # per slice, scaled to 512²
        print(f"| {label} | {frames} | {tool * 1000:.0f} | {tool * unit * 1000:.1f} | {search * unit * 1000:.1f} "
              f"| {single * 1000:.1f} | {tool * unit / baseline:.0f}× |")
    print(f"| baseline: gaussian_filter σ=2, 512² float32 | | | {baseline * 1000:.2f} | | | 1× |")


if __name__ == "__main__":
    main()
