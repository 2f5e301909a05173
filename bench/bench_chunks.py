"""A 300-slice CT pre-read by 1 and 2 Celery workers, its series searched in chunks (issue 26).

What is measured
----------------
A throwaway Orthanc and Redis (as ``bench_preread.py``), one study of ``--slices`` slices (the
eight of LIDC-IDRI-0002 stacked, new UIDs), and ``loupe worker --concurrency 1`` processes sharing a
data folder. Each configuration runs the study's job ``--runs`` times (a forced re-run each time,
so the series is retrieved from the PACS once, in an untimed first run, and searched every time),
and prints the median time from submitting the job to its result in the ledger, with the number
of chunks the other worker searched. The baseline, in this process: ``detect_volume`` over every
slice of the same series, on one core (the search alone, no retrieval, figures or report).

Configurations: 1 worker (the job's worker searches every chunk itself), 2 workers with chunks of
``--chunk`` slices (default 64: five chunks for 304 slices) and of a quarter of that. On 2 cores
Orthanc, Redis and this process share the cores, so the 2-worker ratio cannot reach 2.

Run: ``.venv/bin/python bench/bench_chunks.py [--slices 304] [--runs 3] [--chunk 64]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_preread import LIDC2, PASSWORD, USER, _ct_study  # noqa: E402

from agent.settings import LoupeSettings  # noqa: E402
from tests.orthanc import OrthancServer, orthanc_installed  # noqa: E402
from tests.redis_service import RedisServer, redis_installed  # noqa: E402
from tests.worker_process import WorkerProcess  # noqa: E402

TIMEOUT_S = 600.0


def _search_here(folder: Path, runs: int) -> float:
    """Median seconds of ``detect_volume`` over every slice of the series in ``folder``."""
    from tools.detection.detector import detect_volume
    from tools.study import open_study

    times = []
    with open_study(folder) as study:
        for _ in range(runs):
            began = time.perf_counter()
            detect_volume(study, limit=5)
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def _run_job(settings: LoupeSettings, study_uid: str, instances: int, first: bool) -> tuple[float, dict]:
    """Submit the study's job (forced after the first time) and wait for it; seconds to its result."""
    from agent.preread.celery_app import CeleryDispatcher
    from agent.preread.ledger import JobKey, PrereadLedger

    ledger = PrereadLedger(settings)
    dispatcher = CeleryDispatcher(settings)
    try:
        asked = ledger.enqueue(JobKey(study_uid, instances), force=not first)
        began = time.perf_counter()
        dispatcher.submit(asked.job_id, "routine")
        deadline = time.monotonic() + TIMEOUT_S
        while (job := ledger.job(asked.job_id))["state"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the job did not finish within {TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        if job["state"] != "done":
            raise SystemExit(f"the job failed: {job['error']}")
        return time.perf_counter() - began, job
    finally:
        dispatcher.close()
        ledger.close()


def _configuration(pacs: OrthancServer, broker: RedisServer, scratch: Path, study, workers: int, chunk: int,
                   runs: int) -> tuple[list[float], list[str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=scratch))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOUPE_")}
    env.update(pacs.env())
    env.update({"LOUPE_DATA_DIR": str(data_dir), "LOUPE_BROKER_URL": broker.url, "PYTHONUNBUFFERED": "1",
                "LOUPE_PREREAD_CHUNK_SLICES": str(chunk)})
    broker.restart(empty=True)
    settings = LoupeSettings(_env_file=None, data_dir=data_dir, dicomweb_url=pacs.dicomweb_url,
                             dicomweb_user=USER, dicomweb_password=PASSWORD, broker_url=broker.url,
                             preread_chunk_slices=chunk)
    started = [WorkerProcess(data_dir.parent / f"{data_dir.name}-worker-{n + 1}.log", "--concurrency", "1",
                             env=env) for n in range(workers)]
    try:
        for worker in started:
            worker.wait_ready()
        _run_job(settings, study.uid, len(study.paths), first=True)  # retrieves the series: untimed
        times, notes = [], []
        for _ in range(runs):
            seconds, job = _run_job(settings, study.uid, len(study.paths), first=False)
            times.append(seconds)
            notes.append(job["note"] or "")
        return times, notes
    finally:
        for worker in started:
            worker.stop()


def _helped(note: str) -> str:
    marker = "series searched in "
    if marker not in note:
        return "not chunked"
    return note.split(marker, 1)[1].split(";")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=304, help="slices of the CT (a multiple of 8; 304)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration (3)")
    parser.add_argument("--chunk", type=int, default=64, help="LOUPE_PREREAD_CHUNK_SLICES (64)")
    args = parser.parse_args()
    if not (orthanc_installed() and redis_installed() and LIDC2.is_dir()):
        print("Orthanc, redis-server or the shared LIDC-IDRI-0002 series is missing; nothing measured.")
        return
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loupe-bench-chunks-") as name, RedisServer() as broker, \
            OrthancServer() as pacs:
        scratch = Path(name)
        (scratch / "study").mkdir()
        study = _ct_study(scratch / "study", LIDC2, max(1, args.slices // 8), 0, time.strftime("%Y%m%d"))
        pacs.seed(study.paths)
        print(f"  baseline: detect_volume over {len(study.paths)} slices here ...", file=sys.stderr)
        here = _search_here(scratch / "study", args.runs)
        rows = []
        for workers, chunk in ((1, args.chunk), (2, args.chunk), (2, max(4, args.chunk // 4))):
            print(f"  {workers} worker(s), chunks of {chunk} ...", file=sys.stderr)
            times, notes = _configuration(pacs, broker, scratch, study, workers, chunk, args.runs)
            rows.append((workers, chunk, times, notes))
    print(f"\nA {len(study.paths)}-slice CT (LIDC-IDRI-0002 ×{len(study.paths) // 8}), pre-read by `loupe worker "
          f"--concurrency 1` processes on {os.cpu_count()} CPUs; median of {args.runs} forced re-runs (series "
          "already retrieved), from submit to the ledger's result (search, fits, figures, draft).\n")
    print(f"Baseline in this process: detect_volume over every slice, {here:.2f} s "
          f"({here / len(study.paths) * 1000:.0f} ms a slice).\n")
    print("| workers | chunk (slices) | median s | runs s | × 1 worker | ÷ search here | shared |")
    print("|---:|---:|---:|---|---:|---:|---|")
    one = statistics.median(rows[0][2])
    for workers, chunk, times, notes in rows:
        median = statistics.median(times)
        print(f"| {workers} | {chunk} | {median:.2f} | {', '.join(f'{t:.1f}' for t in times)} | "
              f"{one / median:.2f} | {median / here:.2f} | {_helped(notes[len(notes) // 2])} |")
    print(f"\nWhole benchmark: {time.monotonic() - began:.0f} s.")


if __name__ == "__main__":
    main()
