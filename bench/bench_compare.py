"""What a comparison with a prior costs (issue 27), in CPU seconds of this process.

Rows, each the median of ``--runs`` runs after one warm-up, on a (prior, current) pair of the
bundled CT sample made as ``tests/prior_studies.py`` makes it (the nodule grown 1.5×, a known
shift, tilt and zoom):

- ``register_images`` alone on one 512² slice pair (the registration);
- ``compare_with_prior`` in a session whose findings are already made: first call (slice
  matching, registration, carrying, measuring, the prior's candidates, figures) and a follow-up
  ("has F1 grown?", the session's registration kept);
- the same without figures, to show what they cost.

The baseline is a bare ``scipy.ndimage.gaussian_filter`` (σ = 2) of a 512² float32 image in the
same process, so the ratios compare across machines.

Run: ``.venv/bin/python bench/bench_compare.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.settings import LoupeSettings  # noqa: E402
from agent.toolbox import new_context, run_tool  # noqa: E402
from tests.prior_studies import write_prior_pair  # noqa: E402
from tools.compare.registration import register_images  # noqa: E402
from tools.compare_with_prior import compare  # noqa: E402


def cpu_median(work: Callable[[], object], runs: int) -> float:
    work()
    times = []
    for _ in range(runs):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return statistics.median(times)


def session(current: Path):
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(current)})
    run_tool(ctx, "detect_anomalies", {"all_frames": True})
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    image = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
    baseline = cpu_median(lambda: ndi.gaussian_filter(image, 2.0), runs * 4)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        pair = write_prior_pair(Path(scratch) / "pair")
        ctx = session(pair.current)
        current = ctx.view().study
        run_tool(ctx, "compare_with_prior", {"prior": str(pair.prior)})
        prior_id = ctx.comparisons[current.id].output.prior_study_id
        prior_study = ctx.views[prior_id].study
        rows.append(("register_images, one 512² slice pair",
                     cpu_median(lambda: register_images(current.physical(5), prior_study.physical(5)), runs)))

        def first_call() -> None:
            ctx._derived.clear()  # no registration kept: as the first comparison of a session
            run_tool(ctx, "compare_with_prior", {"prior": prior_id})

        rows.append(("compare_with_prior, CT series, first call", cpu_median(first_call, runs)))
        rows.append(("compare_with_prior, CT series, follow-up on F1",
                     cpu_median(lambda: run_tool(ctx, "compare_with_prior", {"prior": prior_id, "finding_ids": ["F1"]}),
                                runs)))
        with mock.patch.object(compare, "comparison_figures", lambda *args, **kwargs: []):
            rows.append(("compare_with_prior, CT series, first call, no figures", cpu_median(first_call, runs)))
    print(f"Comparison with a prior: CPU seconds, median of {runs} runs; baseline gaussian_filter 512² "
          f"= {baseline * 1000:.2f} ms\n")
    print("| what | CPU s | ÷ baseline |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:,.0f} |")


if __name__ == "__main__":
    main()
