"""Pre-read throughput: studies on a real Orthanc pre-read by 1 and 2 Celery workers (issue 26).

What is measured
----------------
The benchmark starts its own throwaway Orthanc (``tests/orthanc.py``) and Redis
(``tests/redis_service.py``) as plain processes, and builds ``--studies`` studies (default 12)
from the shared evaluation data (``LOUPE_SHARED_DIR``/data/eval; nothing is copied into the
repo): CT series of LIDC-IDRI-0002 (8 slices), LIDC-IDRI-0003 (10 slices) and LIDC-IDRI-0002
stacked four times (32 slices), and single images — NIH chest radiographs (DX, 1024²),
figshare brain MRI (MR, 512²), BUSI breast ultrasound (US, made grey) — each wrapped with pydicom
as a Secondary Capture instance of its modality in a study of its own. Every study gets fresh
UIDs and today's Study Date. Each configuration gets a fresh Orthanc seeded with the same
studies, a fresh data folder and SQLite database, and ``LOUPE_PREREAD_SEND=sr,pdf``:

* **in-process (reference):** no broker; ``loupe preread run --date <today> --jobs 1`` called in
  this process (``agent.cli.preread.run``): the jobs run one after another here;
* **1 worker / 2 workers:** ``loupe worker --concurrency 1`` subprocesses (each its own process
  group) on the Redis; the jobs are enqueued by ``loupe preread run --date <today>`` as a
  subprocess with ``LOUPE_BROKER_URL``;
* **2 workers, one SIGKILLed:** as above with ``LOUPE_PREREAD_LEASE_S`` = ``--lease`` (10) and a
  sweep every 2 s; once a quarter of the studies are done, the worker holding a running job is
  killed with its whole process group, and the other worker must finish everything, the lost
  job after its lease.

Before the timed jobs, each configuration runs untimed warm-up jobs on studies of their own (an
8-slice CT and an image per worker process), so the pool processes have their caches, as workers
that have been up a while have; they are seeded only into that configuration's Orthanc and left
out of every figure.

Per configuration, from the ledger (``preread_jobs`` rows read to the microsecond) and Orthanc:

* *studies/min* and *images/min*: studies (image instances) over the wall time from the first
  job queued to the last one finished;
* *queued → ready p50/p95*: ``finished_at − queued_at`` per study. "Queued" stands in for
  "stable": ``preread run`` enqueues at once, whereas ``preread watch`` would first wait
  ``LOUPE_PREREAD_STABLE_S`` of quiet (default 60 s) — add it for a watched PACS;
* *queued → SR stored p50/p95*: the first moment a poller of Orthanc's REST API
  (``GET /series?expand`` every 0.2 s, so ±0.2 s) sees both of the study's "Loupe pre-read"
  series (SR and PDF), minus ``queued_at``;
* *service p50*: ``finished_at − started_at`` of the last attempt;
* *job CPU s/study*: user + system CPU seconds of the processes running the jobs (every process
  of the workers' process groups from ``/proc``, or this process for the in-process row) over the
  run, per study; *cores busy* = that CPU time over the wall time; *Orthanc CPU s/study* the
  same for Orthanc. (A single image's analysis computes its FFTs on every core, so one job can
  use more than one core for a moment.) Not given for the killed run: the killed group's CPU
  time is gone with it;
* *lost*: studies not ``done`` when the run ended; *duplicated*: extra job rows, extra pre-read
  sessions (one per study expected), runs above 1, and studies whose Loupe series in Orthanc are
  not exactly one SR series (1–2 instances) and one PDF series (1 instance). Both must be 0;
  *re-run* counts attempts above 1 (the killed job: 1 expected), *skipped* the deliveries a
  worker found already claimed or done (the sweeper's re-submissions; harmless).

The baseline is the in-process row, measured in this process: "× in-process" divides each
row's studies/min by it. *Scale-out efficiency* = studies/min with 2 workers / (2 × 1 worker),
printed beside ``os.cpu_count()``: on 2 cores, Orthanc, Redis and the enqueuing command share
the cores with the workers, so 1.0 is not reachable.

Per-slice cost and a department on paper
----------------------------------------
The detection cost per 512² slice is ``bench/bench_series.py``'s (imported and run here on
LIDC-IDRI-0002 with 2 runs, with its ``gaussian_filter`` baseline). From the 1-worker row a line
is fitted through the CT studies' service times against their slice counts (the slope is the
whole marginal cost of a slice: retrieve, decode, search, store; the intercept the per-study
overhead), and the single-image studies' median service time is the radiograph cost. The
department: 1,000 studies a day, a third 300-slice CTs, the rest 2-image radiographs (counted as
two single-image jobs — conservative: a job analyses the largest series only), arriving over a
10-hour day at a peak rate of 3× the mean (also shown at 1×). One job runs on one core. Cores
are the most of: (a) utilisation ρ = λ·E[S]/c ≤ 0.7; (b) routine p95 ≤ 10 min: an M/M/c queue
(Erlang C, exponential service of mean E[S] — an approximation; CT times are near-deterministic)
with P(wait > t) = C·e^{−(cμ−λ)t}, its 95th percentile wait plus a CT's own service time;
(c) STAT p95 ≤ 5 min: STAT jobs taken first (the ``stat`` queue) and few, so a STAT job waits
only for the next core to free when all are busy (P = C, then exponential of rate cμ), plus a
CT's own service, counted here on one core (a long series' chunks shared by idle workers make it
shorter: ``bench_chunks.py``). The CT cost assumes every slice searched, as the search does, at
the larger of the fitted slope and the detection cost per slice.

The burst
---------
If ``agent.preread.worklist.open_preread`` exists, 20 (``--clinicians``) threads of this process
(as bench_store.py's clinicians inside one app process) open the 1-worker row's pre-read
studies at once, each as a clinician of their own (``open_preread``: the pre-read session
copied, resumed): *open → findings* is the time until the session's findings are in hand,
*+ answer* adds "What did you find?" on the offline backend (which must not run the detector).
Baseline: the same done one clinician at a time. Target p95 ≤ 1 s and no error. (The first
version of this burst found 19 of 20 opens failing: each opened a store of its own, and Alembic's
migration check is not thread-safe; ``open_preread`` now reads on the app's store and the check
is serialised.)

How to read it
--------------
Wall times (``time.time`` for cross-process moments, ``perf_counter`` inside this process);
medians over ``--runs`` repetitions of every configuration (default 3; the lost, duplicated,
re-run and skipped columns are the worst run's); the burst runs once, on the first 1-worker run.
The load of the machine matters, so the 1-minute load average before → after is printed. When
Orthanc, redis-server or the shared data are missing, the benchmark says so and exits without
timing anything.

Run: ``.venv/bin/python bench/bench_preread.py [--studies N] [--runs R] [--lease S] [--clinicians C]``
(default 12 studies, 3 runs; about 4 minutes on two cores; ``--runs 1``: under 2 minutes).
``BENCH_TIMELINE=1`` prints every job's queued / started / finished moments to stderr.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.settings import LoupeSettings  # noqa: E402
from tests.orthanc import PASSWORD, USER, OrthancServer, orthanc_installed  # noqa: E402
from tests.redis_service import RedisServer, redis_installed  # noqa: E402
from tests.worker_process import WorkerProcess  # noqa: E402

SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", ROOT.parent / "shared"))
EVAL = SHARED / "data" / "eval"
LIDC2, LIDC3 = EVAL / "lidc_ct" / "LIDC-IDRI-0002", EVAL / "lidc_ct" / "LIDC-IDRI-0003"
RASTERS = {"DX": (EVAL / "nih_cxr14", "*.png"), "MR": (EVAL / "figshare_brain_mri", "*.jpg"),
           "US": (EVAL / "busi", "*.png")}
#: The studies in the order they are made (cycled for --studies): CT series (slices) and single images.
PATTERN = (("CT", LIDC2, 1), "DX", "MR", "US", ("CT", LIDC3, 1), "DX", "MR", "US", ("CT", LIDC2, 4), "DX", "MR", "US")
LOUPE_SERIES = "Loupe pre-read"
RUN_TIMEOUT_S = 420.0
TARGET_OPEN_P95_S = 1.0

warnings.filterwarnings("ignore", module="pydicom")


# -- the studies ---------------------------------------------------------------------------------------


@dataclass
class StudyFiles:
    uid: str
    modality: str
    label: str
    paths: list[Path]

    @property
    def images(self) -> int:
        return len(self.paths)


def _stamp(ds: Dataset, study_uid: str, series_uid: str, patient: str, today: str) -> None:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = ds.SeriesDate = today
    ds.StudyTime = ds.SeriesTime = datetime.now().strftime("%H%M%S")
    ds.PatientID, ds.PatientName = patient, f"Bench^{patient}"
    ds.AccessionNumber = patient[-16:]


def _ct_study(folder: Path, source: Path, copies: int, index: int, today: str) -> StudyFiles:
    """The series of ``source`` (stacked ``copies`` times) as a new study."""
    originals = [pydicom.dcmread(p) for p in sorted(source.glob("*.dcm"))]
    positions = [float(ds.ImagePositionPatient[2]) for ds in originals]
    span = max(positions) - min(positions) + 2.5
    study_uid, series_uid, patient = generate_uid(), generate_uid(), f"PREREAD-BENCH-{index:03d}"
    paths = []
    for copy in range(copies):
        for number, original in enumerate(originals):
            ds = original.copy()
            _stamp(ds, study_uid, series_uid, patient, today)
            ds.InstanceNumber = copy * len(originals) + number + 1
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + copy * span]
            path = folder / f"{index:03d}-{len(paths):03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return StudyFiles(study_uid, "CT", f"CT {len(paths)} slices ({source.name})", paths)


def _raster_study(folder: Path, modality: str, image_path: Path, index: int, today: str) -> StudyFiles:
    """One PNG/JPEG as a Secondary Capture instance of ``modality``, in a study of its own."""
    from PIL import Image

    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    study_uid = generate_uid()
    _stamp(ds, study_uid, generate_uid(), f"PREREAD-BENCH-{index:03d}", today)
    ds.Modality, ds.ConversionType = modality, "WSD"
    ds.StudyDescription = ds.SeriesDescription = f"Bench {modality} {image_path.stem}"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    path = folder / f"{index:03d}-000.dcm"
    ds.save_as(path, enforce_file_format=True)
    return StudyFiles(study_uid, modality, f"{modality} {pixels.shape[1]}×{pixels.shape[0]}", [path])


def _make_studies(folder: Path, count: int, today: str) -> list[StudyFiles]:
    pools = {m: sorted(d.glob(pattern)) for m, (d, pattern) in RASTERS.items()}
    used = dict.fromkeys(pools, 0)
    studies = []
    for index in range(count):
        kind = PATTERN[index % len(PATTERN)]
        if isinstance(kind, tuple):
            _, source, copies = kind
            studies.append(_ct_study(folder, source, copies, index, today))
        else:
            image = pools[kind][used[kind] % len(pools[kind])]
            used[kind] += 1
            studies.append(_raster_study(folder, kind, image, index, today))
    return studies


def _missing() -> str | None:
    if not orthanc_installed():
        return ("Orthanc is not installed (/usr/sbin/Orthanc and the DICOMweb plugin, Debian's orthanc and "
                "orthanc-dicomweb): nothing to measure.")
    if not redis_installed():
        return "redis-server is not installed (Debian's redis-server): nothing to measure."
    if len(list(LIDC2.glob("*.dcm"))) != 8 or not list(LIDC3.glob("*.dcm")):
        return f"The LIDC-IDRI series were not found in {EVAL / 'lidc_ct'} (set LOUPE_SHARED_DIR): nothing to measure."
    for modality, (folder, pattern) in RASTERS.items():
        if not list(folder.glob(pattern)):
            return f"No {modality} images in {folder} (set LOUPE_SHARED_DIR): nothing to measure."
    return None


# -- watching Orthanc for the stored results ---------------------------------------------------------------


class SeriesPoller(threading.Thread):
    """Notes when each study first holds both Loupe pre-read series (SR and PDF)."""

    def __init__(self, pacs: OrthancServer, every_s: float = 0.2):
        super().__init__(name="bench-sr-poller", daemon=True)
        self.pacs, self.every_s = pacs, every_s
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)
        self.study_of = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"]
                         for s in self.session.get(f"{pacs.url}/studies?expand", timeout=30).json()}
        self.stored_at: dict[str, float] = {}
        self.stopped = threading.Event()

    def loupe_series(self) -> dict[str, list[tuple[str, int]]]:
        """Study UID → [(series description, instances)] of its Loupe pre-read series."""
        found: dict[str, list[tuple[str, int]]] = {}
        for series in self.session.get(f"{self.pacs.url}/series?expand", timeout=30).json():
            description = series.get("MainDicomTags", {}).get("SeriesDescription", "")
            if description.startswith(LOUPE_SERIES):
                uid = self.study_of.get(series["ParentStudy"], series["ParentStudy"])
                found.setdefault(uid, []).append((description, len(series.get("Instances", []))))
        return found

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                seen, now = self.loupe_series(), time.time()
            except requests.RequestException:
                continue
            for uid, series in seen.items():
                kinds = {d.rsplit("(", 1)[-1] for d, _ in series}
                if {"SR)", "PDF)"} <= kinds:
                    self.stored_at.setdefault(uid, now)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


# -- workers -----------------------------------------------------------------------------------------


# -- one configuration -------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    workers: int
    studies: list[StudyFiles]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    stored_at: dict[str, float] = field(default_factory=dict)
    loupe_series: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    sessions: int = 0
    skipped: int = 0
    killed_job: int | None = None
    enqueue_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    data_dir: Path | None = None
    #: CPU seconds (user + system) of the jobs' processes (the workers' process groups, or this
    #: process in-process) and of Orthanc, from the first measured job queued to the last done.
    cpu_jobs: float = float("nan")
    cpu_pacs: float = float("nan")

    @property
    def done(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["state"] == "done"]

    @property
    def wall_s(self) -> float:
        if not self.done:
            return float("nan")
        return max(j["finished"] for j in self.done) - min(j["queued"] for j in self.jobs)

    @property
    def per_min(self) -> float:
        return len(self.done) / self.wall_s * 60

    @property
    def images_per_min(self) -> float:
        images = {s.uid: s.images for s in self.studies}
        return sum(images[j["study_uid"]] for j in self.done) / self.wall_s * 60

    @property
    def ready(self) -> list[float]:
        return [j["finished"] - j["queued"] for j in self.done]

    @property
    def to_sr(self) -> list[float]:
        queued = {j["study_uid"]: j["queued"] for j in self.jobs}
        return [at - queued[uid] for uid, at in self.stored_at.items() if uid in queued]

    @property
    def lost(self) -> int:
        done = {j["study_uid"] for j in self.done}
        return sum(s.uid not in done for s in self.studies)

    @property
    def sr_problems(self) -> int:
        bad = 0
        for study in self.studies:
            series = self.loupe_series.get(study.uid, [])
            kinds = sorted(d.rsplit("(", 1)[-1] for d, _ in series)
            counts = {d.rsplit("(", 1)[-1]: n for d, n in series}
            if kinds != ["PDF)", "SR)"] or counts["PDF)"] != 1 or not 1 <= counts["SR)"] <= 2:
                bad += 1
        return bad

    @property
    def duplicated(self) -> int:
        rows = len(self.jobs) - len({j["study_uid"] for j in self.jobs})
        runs = sum(j["run"] - 1 for j in self.jobs)
        sessions = max(0, self.sessions - len(self.done))
        return rows + runs + sessions + self.sr_problems

    @property
    def reruns(self) -> int:
        return sum(max(0, j["attempts"] - 1) for j in self.jobs)


def _ledger_rows(settings: LoupeSettings) -> tuple[list[dict[str, Any]], int]:
    """Every job row (times as epoch seconds, to the microsecond) and the pre-read sessions."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from agent.preread.job import PREREAD_OWNER
    from agent.store.database import PrereadJobRow, Store

    def epoch(value: datetime | None) -> float | None:
        if value is None:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    try:
        with Session(store.engine) as db:
            rows = [{"id": r.id, "study_uid": r.study_uid, "state": r.state, "run": r.run, "attempts": r.attempts,
                     "worker": r.worker, "queued": epoch(r.queued_at), "started": epoch(r.started_at),
                     "finished": epoch(r.finished_at), "error": r.error}
                    for r in db.scalars(select(PrereadJobRow))]
        sessions = len(store.list_sessions(PREREAD_OWNER))
    finally:
        store.close()
    return rows, sessions


def _configuration(label: str, workers: int, studies: list[StudyFiles], warmups: list[StudyFiles], scratch: Path,
                   today: str,
                   broker: RedisServer | None, *, lease_s: float = 600.0, kill: bool = False,
                   keep_data: bool = False) -> Result:
    from agent.preread.ledger import PrereadLedger

    result = Result(label, workers, studies)
    folder = Path(tempfile.mkdtemp(prefix="config-", dir=scratch))
    data_dir = folder / "data"
    warm = warmups[:2 * max(1, workers)]
    with OrthancServer() as pacs:
        for study in [*warm, *studies]:  # only these: `preread run --date today` takes every study of today
            pacs.seed(study.paths)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LOUPE_") and k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
        env.update(pacs.env())
        env.update({"LOUPE_DATA_DIR": str(data_dir), "LOUPE_PREREAD_SEND": "sr,pdf",
                    "LOUPE_PREREAD_LEASE_S": str(lease_s), "PYTHONUNBUFFERED": "1"})
        if broker is not None:
            broker.restart(empty=True)  # nothing left over from the previous configuration
            env["LOUPE_BROKER_URL"] = broker.url
        settings = LoupeSettings(_env_file=None, data_dir=data_dir, dicomweb_url=pacs.dicomweb_url,
                                 dicomweb_user=USER, dicomweb_password=PASSWORD, preread_send="sr,pdf",
                                 preread_lease_s=lease_s, broker_url=None if broker is None else broker.url)
        PrereadLedger(settings).close()  # the schema, before any worker opens the database
        started: list[WorkerProcess] = []
        poller: SeriesPoller | None = None
        try:
            for number in range(workers):
                started.append(WorkerProcess(folder / f"worker-{number + 1}.log", "--concurrency", "1", "--sweep-every",
                                             str(2.0 if kill else 15.0), env=env))
            for worker in started:
                worker.wait_ready()
            _warm_up(settings, warm, broker is not None)
            poller = SeriesPoller(pacs)
            poller.start()
            result.load = (os.getloadavg()[0], 0.0)
            cpu_before = _cpu_seconds(started, pacs)
            began = time.perf_counter()
            if broker is None:
                _run_in_process(settings, today)
            else:
                command = subprocess.run([sys.executable, "-m", "agent.cli", "preread", "run", "--date", today],
                                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
                if command.returncode != 0:
                    raise SystemExit(f"loupe preread run failed:\n{command.stdout}\n{command.stderr}")
            result.enqueue_s = time.perf_counter() - began
            result.killed_job = _wait_all(settings, len(warm) + len(studies), len(warm), started if kill else [])
            time.sleep(2 * poller.every_s)
            poller.stop()
            result.load = (result.load[0], os.getloadavg()[0])
            cpu_after = _cpu_seconds(started, pacs)
            if not any(w.killed for w in started):  # a killed worker's CPU time is gone with it
                result.cpu_jobs = cpu_after[0] - cpu_before[0]
            result.cpu_pacs = cpu_after[1] - cpu_before[1]
            result.loupe_series = poller.loupe_series()
            result.stored_at = dict(poller.stored_at)
        finally:
            if poller is not None:
                poller.stop()
            for worker in started:
                worker.stop()
        result.skipped = sum(w.text().count(": skipped (") for w in started)
        jobs, sessions = _ledger_rows(settings)
        measured = {s.uid for s in studies}
        result.jobs = [j for j in jobs if j["study_uid"] in measured]
        result.sessions = sessions - sum(j["state"] == "done" for j in jobs if j["study_uid"] not in measured)
    if keep_data:
        result.data_dir = data_dir
    if os.environ.get("BENCH_TIMELINE"):
        origin = min(j["queued"] for j in result.jobs)
        for job in sorted(result.jobs, key=lambda j: j["started"] or 0):
            print(f"    {label} job {job['id']}: queued +{job['queued'] - origin:.2f} started "
                  f"+{(job['started'] or origin) - origin:.2f} finished +{(job['finished'] or origin) - origin:.2f} "
                  f"{job['worker']}", file=sys.stderr)
        print(f"    {label}: enqueue command {result.enqueue_s:.2f} s", file=sys.stderr)
    return result


def _warm_up(settings: LoupeSettings, warm: list[StudyFiles], broker: bool) -> None:
    """Untimed jobs first (a CT and an image per worker), so the pool processes have their caches
    as a worker that has been up a while has; which worker takes which is the broker's choice."""
    from agent.pacs.client import PacsConnection
    from agent.preread.job import job_key_for
    from agent.preread.ledger import PrereadLedger
    from agent.preread.runner import LocalDispatcher

    ledger = PrereadLedger(settings)
    try:
        connection = PacsConnection(settings)
        ids = [ledger.enqueue(job_key_for(connection, study.uid)).job_id for study in warm]
        if broker:
            from agent.preread.celery_app import CeleryDispatcher

            dispatcher = CeleryDispatcher(settings)
            for job_id in ids:
                dispatcher.submit(job_id, "routine")
            dispatcher.close()
        else:
            local = LocalDispatcher(settings, 0)
            for job_id in ids:
                local.submit(job_id, "routine")
        deadline = time.monotonic() + 180
        while any(ledger.job(i)["state"] not in ("done", "failed") for i in ids):
            if time.monotonic() > deadline:
                raise SystemExit("the warm-up jobs did not finish within 180 s")
            time.sleep(0.1)
    finally:
        ledger.close()


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float]:
    """(process group, user + system CPU seconds) of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK


def _cpu_seconds(workers: list[WorkerProcess], pacs: OrthancServer) -> tuple[float, float]:
    """CPU seconds so far of the workers' process groups (of this process when there is no
    worker) and of Orthanc."""
    groups = {w.pid for w in workers if not w.killed}
    jobs = 0.0
    if not workers:
        times = os.times()
        jobs = times.user + times.system
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not groups:
            continue
        try:
            group, seconds = _proc_cpu(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
        if group in groups:
            jobs += seconds
    try:
        orthanc = _proc_cpu(pacs.process.pid)[1]
    except (OSError, AttributeError):
        orthanc = float("nan")
    return jobs, orthanc


def _run_in_process(settings: LoupeSettings, today: str) -> None:
    """``loupe preread run --date today --jobs 1`` without a broker, in this process."""
    from agent.cli import preread

    args = argparse.Namespace(action="run", date=today, modality=None, priority="routine", force=False, jobs=1)
    with redirect_stdout(io.StringIO()):
        preread.run(args, settings)


def _wait_all(settings: LoupeSettings, count: int, warm: int, workers: list[WorkerProcess]) -> int | None:
    """Until all ``count`` jobs are done or failed; with ``workers`` given, SIGKILL the one holding
    a running job once a quarter of the measured ones (all but ``warm``) are done. The killed
    job's id, if any."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    killed = None
    while time.monotonic() < deadline:
        rows, _ = _ledger_rows(settings)
        settled = [r for r in rows if r["state"] in ("done", "failed")]
        if len(rows) >= count and len(settled) == len(rows):
            return killed
        if workers and killed is None and len(settled) - warm >= max(1, (count - warm) // 4):
            for row in rows:
                if row["state"] != "running" or not row["worker"]:
                    continue
                pid = int(row["worker"].rsplit(":", 1)[1])
                holder = next((w for w in workers if w.owns(pid)), None)
                if holder is not None:
                    holder.kill()
                    killed = row["id"]
                    print(f"    SIGKILLed worker {holder.pid} (its process group) holding job {killed}",
                          file=sys.stderr)
                    break
        time.sleep(0.1)
    print(f"    not every job settled within {RUN_TIMEOUT_S:.0f} s: counted as lost", file=sys.stderr)
    return killed


# -- the burst: clinicians opening pre-read studies ------------------------------------------------------------


def _burst(data_dir: Path, clinicians: int, baseline_runs: int = 3) -> dict[str, Any] | str:
    try:
        from agent.preread.worklist import open_preread
    except ImportError as error:
        return f"Burst not measured yet: agent.preread.worklist has no open_preread ({error})."
    from agent.models.planner import OfflinePlanner
    from agent.preread.ledger import PrereadLedger
    from agent.store.database import Store

    settings = LoupeSettings(_env_file=None, data_dir=data_dir)
    ledger = PrereadLedger(settings)
    try:
        jobs = [row["job_id"] for row in ledger.status() if row["state"] == "done"]
    finally:
        ledger.close()
    if not jobs:
        return "Burst not measured: no pre-read study was done."
    store = Store.for_data_dir(data_dir)

    def visit(job_id: int, owner: str) -> tuple[float, float, int]:
        start = time.perf_counter()
        conversation = open_preread(settings, store, job_id, owner)
        findings = len(conversation.ctx.findings)
        opened = time.perf_counter() - start
        try:
            events = list(conversation.ask("What did you find?", OfflinePlanner()))
            if not any(e.kind == "assistant_text" for e in events):
                raise RuntimeError("no answer")
            if any(e.kind == "tool_started" and getattr(e, "name", "") == "detect_anomalies" for e in events):
                raise RuntimeError("the detector ran again")
        finally:
            conversation.ctx.close()
        return opened, time.perf_counter() - start, findings

    def burst_pass(prefix: str) -> dict[str, Any]:
        results: list[tuple[float, float, int] | None] = [None] * clinicians
        errors: list[str] = []
        gate = threading.Event()

        def clinician(index: int) -> None:
            gate.wait()
            try:
                results[index] = visit(jobs[index % len(jobs)], f"{prefix}-{index:02d}")
            except Exception as error:  # noqa: BLE001 — counted and reported
                where = traceback.extract_tb(error.__traceback__)[-1]
                errors.append(f"{prefix}-{index:02d}: {type(error).__name__}: {error} "
                              f"(at {Path(where.filename).name}:{where.lineno})")
                if os.environ.get("BENCH_TRACEBACK"):
                    traceback.print_exc()

        threads = [threading.Thread(target=clinician, args=(i,), daemon=True) for i in range(clinicians)]
        for thread in threads:
            thread.start()
        gate.set()
        for thread in threads:
            thread.join(timeout=300)
        done = [r for r in results if r is not None]
        return {"open": [r[0] for r in done], "answer": [r[1] for r in done], "errors": errors,
                "findings": sum(r[2] for r in done)}

    passes: list[tuple[str, dict[str, Any]]] = []
    try:
        visit(jobs[0], "bench-warm-up")
        base = [visit(jobs[i % len(jobs)], f"bench-base-{i}")[0] for i in range(baseline_runs)]
        passes.append(("at once", burst_pass("dr-burst")))
    except Exception as error:  # noqa: BLE001 — the helper may still be in progress
        return f"Burst not measured: opening a pre-read failed ({type(error).__name__}: {error})."
    finally:
        store.close()
    return {"clinicians": clinicians, "studies": len(jobs), "base_p50": statistics.median(base), "passes": passes}


# -- per-slice cost (bench_series.py) -----------------------------------------------------------------------


def _per_slice(runs: int) -> tuple[float, float] | None:
    """bench_series.py's figure on LIDC-IDRI-0002: CPU s per 512² slice (tool, all frames), baseline."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_series
    except Exception as error:  # noqa: BLE001
        print(f"  bench_series.py could not be imported ({error})", file=sys.stderr)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = bench_series._baseline(runs)
        tool = bench_series._tool_seconds(LIDC2, runs)
    with bench_series.open_study(LIDC2) as study:
        frames = study.frame_count
        rows, cols = study.physical(0).shape[:2]
    return tool * bench_series.SLICE_PIXELS / (rows * cols) / frames, baseline


# -- a department on paper ------------------------------------------------------------------------------------


def _erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load ``a`` (< c)."""
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c * c / (c - a)
    return last / (total + last)


def _wait_p95(c: int, a: float, mu: float, lam: float) -> float:
    """95th percentile FCFS wait in M/M/c (s)."""
    if a >= c:
        return math.inf
    chance = _erlang_c(c, a)
    return 0.0 if chance <= 0.05 else math.log(chance / 0.05) / (c * mu - lam)


def _stat_wait_p95(c: int, a: float, mu: float) -> float:
    """A STAT job (taken first) waits for the next of ``c`` busy cores: P(all busy) = C(c, a)."""
    if a >= c:
        return math.inf
    chance = _erlang_c(c, a)
    return 0.0 if chance <= 0.05 else math.log(chance / 0.05) / (c * mu)


def _department(ct_s: float, rad_s: float, peak: float, per_day: int = 1000, ct_share: float = 1 / 3,
                hours: float = 10.0) -> dict[str, Any]:
    lam = per_day * peak / (hours * 3600)
    mean_s = ct_share * ct_s + (1 - ct_share) * rad_s
    a, mu = lam * mean_s, 1 / mean_s
    by_util = max(1, math.ceil(a / 0.7))
    by_routine = by_stat = None
    for c in range(max(1, math.floor(a) + 1), 1000):
        if by_routine is None and _wait_p95(c, a, mu, lam) + ct_s <= 600:
            by_routine = c
        if by_stat is None and _stat_wait_p95(c, a, mu) + ct_s <= 300:
            by_stat = c
        if by_routine and by_stat:
            break
    needed = max(by_util, by_routine or math.inf, by_stat or math.inf)
    at = needed if math.isfinite(needed) else None
    return {"peak": peak, "per_hour": lam * 3600, "mean_s": mean_s, "load": a, "by_util": by_util,
            "by_routine": by_routine, "by_stat": by_stat, "needed": needed,
            "routine_p95": None if at is None else _wait_p95(at, a, mu, lam) + ct_s,
            "stat_p95": None if at is None else _stat_wait_p95(at, a, mu) + ct_s}


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of service seconds against slices."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(set(xs)) < 2:
        return float(ys.mean()), 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


# -- the tables ---------------------------------------------------------------------------------------------


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _f(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _tables(rows: dict[str, list[Result]], studies: list[StudyFiles], per_slice: tuple[float, float] | None,
            burst: dict[str, Any] | str, runs: int) -> None:
    images = sum(s.images for s in studies)
    kinds = ", ".join(f"{n}× {k}" for k, n in sorted(_count(s.modality for s in studies).items()))
    cores = os.cpu_count()
    reference = _med([r.per_min for r in rows["in-process (reference)"]])
    print(f"\nPre-read of {len(studies)} studies ({kinds}; {images} images), LOUPE_PREREAD_SEND=sr,pdf, a fresh "
          f"Orthanc and SQLite per configuration; median of {runs} run(s). \"queued\" stands in for \"stable\" "
          f"(a watched PACS adds LOUPE_PREREAD_STABLE_S). Baseline: the in-process row ({_f(reference)} studies/min). "
          f"{cores} CPUs.\n")
    print("| configuration | studies/min | images/min | × in-process | queued → ready p50 s | p95 s | "
          "queued → SR stored p50 s | p95 s | service p50 s | job CPU s/study | cores busy | Orthanc CPU s/study "
          "| lost | duplicated | re-run | skipped | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, results in rows.items():
        per_min = _med([r.per_min for r in results])
        service = _med([_med([j["finished"] - j["started"] for j in r.done]) for r in results])
        print(f"| {label} | {_f(per_min)} | {_f(_med([r.images_per_min for r in results]), 0)} | "
              f"{per_min / reference:.2f}× | {_f(_med([_pct(r.ready, 50) for r in results]))} | "
              f"{_f(_med([_pct(r.ready, 95) for r in results]))} | {_f(_med([_pct(r.to_sr, 50) for r in results]))} | "
              f"{_f(_med([_pct(r.to_sr, 95) for r in results]))} | {_f(service)} | "
              f"{_f(_med([r.cpu_jobs / len(r.studies) for r in results]), 2)} | "
              f"{_f(_med([r.cpu_jobs / r.wall_s for r in results]), 2)} | "
              f"{_f(_med([r.cpu_pacs / len(r.studies) for r in results]), 2)} | "
              f"{max(r.lost for r in results)} | {max(r.duplicated for r in results)} | "
              f"{max(r.reruns for r in results)} | {max(r.skipped for r in results)} | "
              f"{results[-1].load[0]:.2f} → {results[-1].load[1]:.2f} |")
    one, two = _med([r.per_min for r in rows["1 worker"]]), _med([r.per_min for r in rows["2 workers"]])
    print(f"\nScale-out efficiency (2 workers / (2 × 1 worker)): {two / (2 * one):.2f} on a machine with {cores} CPUs "
          f"(Orthanc, Redis, the poller and the workers' main processes share them).")
    killed = rows.get("2 workers, one SIGKILLed")
    if killed:
        lost = [r.killed_job for r in killed]
        print(f"Killed run: job(s) {', '.join(map(str, lost))} were held by the SIGKILLed worker; every study still "
              f"done once: lost {max(r.lost for r in killed)}, duplicated {max(r.duplicated for r in killed)}.")
    problems = [(label, j) for label, results in rows.items() for r in results for j in r.jobs if j["state"] != "done"]
    for label, job in problems[:10]:
        print(f"- {label}: job {job['id']} {job['state']}: {job['error']}")

    # per-kind service times and the department on paper
    uid_study = {s.uid: s for s in studies}
    pooled = [(uid_study[j["study_uid"]], j["finished"] - j["started"]) for r in rows["1 worker"] for j in r.done]
    by_study: dict[str, list[float]] = {}
    for study, seconds in pooled:
        by_study.setdefault(study.uid, []).append(seconds)
    service = [(uid_study[uid], statistics.median(times)) for uid, times in by_study.items()]
    ct_points = [(s.images, t) for s, t in pooled if s.modality == "CT"]
    singles = [t for s, t in pooled if s.modality != "CT"]
    intercept, slope = _fit(ct_points)
    fitted = len({n for n, _ in ct_points}) >= 2 and slope > 0
    if not fitted and per_slice is not None:  # one CT size only: the detection cost per slice instead
        slope = per_slice[0]
        intercept = _med([t - n * slope for n, t in ct_points])
    print("\nService time per study (1 worker, median over the runs: finished − started: retrieve, open, search, "
          "fit, render, draft, store SR + PDF)\n")
    print("| study | images | service s |")
    print("|---|---:|---:|")
    for study, seconds in sorted(service, key=lambda p: (p[0].modality, p[0].images)):
        print(f"| {study.label} | {study.images} | {seconds:.2f} |")
    how = "fitted, end to end" if fitted else "detection cost per slice from bench_series.py (one CT size only)"
    print(f"\nCT: {intercept:.2f} s per study + {slope * 1000:.0f} ms per slice ({how}); "
          f"single images: median {_med(singles):.2f} s.")
    if per_slice is not None:
        tool, gauss = per_slice
        print(f"Detection alone (bench_series.py, LIDC-IDRI-0002, all frames): {tool * 1000:.1f} ms CPU per 512² "
              "slice "
              f"= {tool / gauss:.0f}× a gaussian_filter σ=2 of 512² ({gauss * 1000:.2f} ms).")
    # Every slice searched, as the issue asks: the end-to-end slope, or the detection cost alone when higher.
    per_slice_s = max(slope, per_slice[0] if per_slice is not None else 0.0)
    ct300 = intercept + 300 * per_slice_s
    rad2 = 2 * _med(singles)
    print(f"\nOn paper: 1,000 studies/day over 10 h, ⅓ 300-slice CTs ({ct300:.0f} s each on one core: "
          f"{intercept:.2f} s + 300 × {per_slice_s * 1000:.0f} ms), "
          f"⅔ 2-image radiographs ({rad2:.1f} s: two single-image jobs); one job per core; cores = max of "
          "ρ ≤ 0.7, routine p95 (M/M/c wait p95 + a CT's service) ≤ 10 min, STAT p95 (wait for the next free core "
          "+ a CT's service) ≤ 5 min.\n")
    print("| arrivals | studies/h | mean service s | offered load (cores) | cores for ρ ≤ 0.7 | "
          "for routine p95 ≤ 10 min "
          "| for STAT ≤ 5 min | worker cores needed | routine p95 s there | STAT p95 s there |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for peak in (1.0, 3.0):
        d = _department(ct300, rad2, peak)
        label = "mean" if peak == 1 else f"peak {peak:g}×"
        print(f"| {label} | {d['per_hour']:.0f} | {d['mean_s']:.1f} | {d['load']:.2f} | {d['by_util']} | "
              f"{d['by_routine'] or 'never'} | {d['by_stat'] or 'never (split the series)'} | {d['needed']} | "
              f"{_f(d['routine_p95'], 0)} | {_f(d['stat_p95'], 0)} |")
    if ct300 > 300:
        print(f"\nA 300-slice CT alone takes {ct300:.0f} s on one core: STAT ≤ 5 min needs the series split across "
              "workers (not done yet).")

    print()
    if isinstance(burst, str):
        print(burst)
        return
    print(f"Burst: {burst['clinicians']} clinicians (threads of this process) open the 1-worker row's "
          f"{burst['studies']} pre-read studies at once (open_preread: copy + resume), then ask \"What did you "
          f"find?\" (offline backend). Baseline: one at a time, open p50 {burst['base_p50'] * 1000:.0f} ms. "
          f"Target: open → findings p95 ≤ {TARGET_OPEN_P95_S:g} s, 0 errors; percentiles over the clinicians "
          "served.\n")
    print("| pass | clinicians served | open → findings p50 ms | p95 ms | p95 / base p50 | + answer p95 ms | "
          "findings in hand | errors | target met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, stats in burst["passes"]:
        opens, answers = stats["open"], stats["answer"]
        met = bool(opens) and _pct(opens, 95) <= TARGET_OPEN_P95_S and not stats["errors"]
        print(f"| {label} | {len(opens)} of {burst['clinicians']} | {_pct(opens, 50) * 1000:.0f} | "
              f"{_pct(opens, 95) * 1000:.0f} | {_pct(opens, 95) / burst['base_p50']:.1f}× | "
              f"{_pct(answers, 95) * 1000:.0f} | {stats['findings']} | {len(stats['errors'])} | "
              f"{'yes' if met else 'no'} |")
    for label, stats in burst["passes"]:
        kinds = _count(e.split(": ", 1)[1] for e in stats["errors"])
        for error, times in kinds.items():
            print(f"- {label}: {times}× {error}")


def _count(items) -> dict[str, int]:
    counted: dict[str, int] = {}
    for item in items:
        counted[item] = counted.get(item, 0) + 1
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12, help="studies seeded per configuration (12)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every configuration (3)")
    parser.add_argument("--lease", type=float, default=10.0, help="LOUPE_PREREAD_LEASE_S of the killed run (10)")
    parser.add_argument("--clinicians", type=int, default=20, help="clinicians of the burst (20)")
    parser.add_argument("--no-kill", action="store_true", help="skip the run with a worker SIGKILLed")
    args = parser.parse_args()
    if args.studies < 4 or args.runs < 1:
        parser.error("--studies must be at least 4 and --runs at least 1")
    missing = _missing()
    if missing:
        print(missing)
        return
    began = time.monotonic()
    today = date.today().strftime("%Y%m%d")
    rows: dict[str, list[Result]] = {"in-process (reference)": [], "1 worker": [], "2 workers": []}
    if not args.no_kill:
        rows["2 workers, one SIGKILLed"] = []
    burst: dict[str, Any] | str = "Burst not measured."
    with tempfile.TemporaryDirectory(prefix="loupe-bench-preread-") as scratch_name, RedisServer() as broker:
        scratch = Path(scratch_name)
        seeds = scratch / "studies"
        seeds.mkdir()
        studies = _make_studies(seeds, args.studies, today)
        warm_folder = scratch / "warm-up"
        warm_folder.mkdir()
        warmups = [_ct_study(warm_folder, LIDC2, 1, 900, today),
                   _raster_study(warm_folder, "DX", sorted(RASTERS["DX"][0].glob("*.png"))[-1], 901, today),
                   _ct_study(warm_folder, LIDC2, 1, 902, today),
                   _raster_study(warm_folder, "MR", sorted(RASTERS["MR"][0].glob("*.jpg"))[-1], 903, today)]
        for run in range(args.runs):
            print(f"  run {run + 1}: in-process reference ...", file=sys.stderr)
            rows["in-process (reference)"].append(
                _configuration("in-process", 0, studies, warmups, scratch, today, None))
            for workers in (1, 2):
                print(f"  run {run + 1}: {workers} worker(s) ...", file=sys.stderr)
                keep = workers == 1 and run == 0
                rows[f"{workers} worker{'s' if workers > 1 else ''}"].append(
                    _configuration(f"{workers} workers", workers, studies, warmups, scratch, today, broker,
                                   keep_data=keep))
                if keep:
                    print("  burst: clinicians opening pre-read studies ...", file=sys.stderr)
                    burst = _burst(rows["1 worker"][0].data_dir, args.clinicians)
            if not args.no_kill:
                print(f"  run {run + 1}: 2 workers, one SIGKILLed (lease {args.lease:g} s) ...", file=sys.stderr)
                rows["2 workers, one SIGKILLed"].append(_configuration(
                    "killed", 2, studies, warmups, scratch, today, broker, lease_s=args.lease, kill=True))
        print("  per-slice detection cost (bench_series.py) ...", file=sys.stderr)
        per_slice = _per_slice(2)
    _tables(rows, studies, per_slice, burst, args.runs)
    print(f"\nWhole benchmark: {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
