"""Serving a department: simulated clinicians against one and two app processes, SQLite and PostgreSQL.

What is measured
----------------
An *app process* is an OS process (``multiprocessing``, spawn) running Loupe's services exactly
as the Streamlit app calls them: ``Conversation`` with a ``Store`` and the offline backend
(``OfflinePlanner``). The *clinicians* are threads inside the app processes, as a Streamlit
server serves its users from threads of one process; with two app processes the clinicians are
split between them, and both share one data folder and one database, as several servers behind
a load balancer do. Each app process first serves one untimed clinician without a store
(imports, caches: a server that has been up for a while); the schema is created before the app
processes start, as a deployment's first server would.

Each simulated clinician, as soon as every app process is ready (all clinicians start together):
opens the 8-slice CT series of LIDC-IDRI-0002 from the shared evaluation data (512 x 512
slices, ``LOUPE_SHARED_DIR``/data/eval/lidc_ct; pydicom's ``CT_small.dcm`` when it is missing —
the benchmark says so) in a new session of its own, asks five turns on the offline backend
("Analyse this scan", "How big is F1?", "Show the heatmap", "Where is F1?", "Zoom in on F1"), then
"Draft a report", writes the Impression and signs the current report version. With no ``--think`` time the
clinicians ask back to back: the worst case of N people all pressing Enter at once.

Per configuration: *turns* counts every turn asked (the draft included); a turn's latency is the
wall time of ``list(conversation.ask(...))`` (lock, stale check, tools, every event written,
lock released); *turns/s* is turns over the wall time from the first clinician's start to the
last one's signature; *errors* are exceptions (opening, a turn, signing) and turns whose
``TurnFinished.ok`` is false. After the run the bench reads every session back from the
database: *lost events* are events a clinician received that the store lacks (every event is
written before it is shown, so none may be missing), and *store checks* fails a session whose
``turn_started``/``turn_finished`` counts differ from the turns it ran, whose stored events
differ from what it received, whose history does not alternate user/model with the messages
asked in order, whose tool calls lack a row, or whose signed report is not stored.

The baseline row runs in this process, with the same code: one clinician at a time on SQLite
(``--baseline-runs`` sessions in a row); "p95 / base p50" divides each row's p95 turn latency by
the baseline's p50, so the ratios are comparable across machines.
The target (from the issue): p95 turn latency under 3 s, no errors, nothing lost.

The second table gives, per configuration, the study open and sign-off times, the wall time per
turn spent inside store write transactions (which includes waiting for the database's write
lock, and for the GIL), the run's wall time and the load average around it (the machine may be
shared); the third the p95 per message.

PostgreSQL is Debian's ``postgresql``, started by the bench itself (``tests/postgres.py``: a
throwaway cluster on a random loopback port, ``fsync=off``) with a fresh database per
configuration; without it those rows are skipped with a note. Every temporary folder and the
server are removed at the end.

Run: ``.venv/bin/python bench/bench_store.py [--clinicians N] [--turns K] [--think S] [--quick]``
(default 20 clinicians, 5 turns + the draft, no think time; about 2 minutes on two cores;
``--quick``: 4 clinicians, 2 turns + the draft).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom.data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import reports  # noqa: E402
from agent.conversation import Conversation  # noqa: E402
from agent.events import TurnError, TurnFinished  # noqa: E402
from agent.models.planner import OfflinePlanner  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from agent.store.database import Store  # noqa: E402

SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", ROOT.parent / "shared"))
LIDC = SHARED / "data" / "eval" / "lidc_ct" / "LIDC-IDRI-0002"
MESSAGES = ("Analyse this scan", "How big is F1?", "Show the heatmap", "Where is F1?", "Zoom in on F1")
DRAFT = "Draft a report"
TARGET_P95_MS = 3000.0
#: Longest a configuration may take before its app processes are stopped (a hang is a failure).
RUN_TIMEOUT_S = 900

warnings.filterwarnings("ignore", module="pydicom")


def _study() -> tuple[Path, str]:
    slices = sorted(LIDC.glob("*.dcm"))
    if len(slices) == 8:
        return LIDC, "LIDC-IDRI-0002, 8-slice CT series, 512 x 512"
    found = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    if found is None:
        raise SystemExit(f"Neither the LIDC-IDRI-0002 series ({LIDC}) nor pydicom's CT_small.dcm is installed.")
    print(f"  the 8 LIDC-IDRI-0002 slices are not in {LIDC} (set LOUPE_SHARED_DIR): using CT_small.dcm",
          file=sys.stderr)
    return Path(found), "pydicom CT_small.dcm, 1 slice, 128 x 128"


# -- time spent in store writes -----------------------------------------------------------------------

_WRITES = threading.local()


def _time_store_writes() -> None:
    """Wrap ``Store.transaction`` (in this process) to add each write's wall time to the thread's tally."""
    if getattr(Store.transaction, "bench_timed", False):
        return
    original = Store.transaction

    @contextmanager
    def transaction(self):
        start = time.perf_counter()
        try:
            with original(self) as db:
                yield db
        finally:
            _WRITES.ms = getattr(_WRITES, "ms", 0.0) + (time.perf_counter() - start) * 1000

    transaction.bench_timed = True  # type: ignore[attr-defined]
    Store.transaction = transaction  # type: ignore[method-assign]


def _writes_ms() -> float:
    return getattr(_WRITES, "ms", 0.0)


# -- one clinician, one app process ----------------------------------------------------------------------


def _clinician(settings: LoupeSettings, store: Store | None, study: Path, name: str, messages: list[str],
               think_s: float, seed: int) -> dict[str, Any]:
    """One clinician's visit; a plain dict (it crosses process boundaries)."""
    rng = random.Random(seed)
    backend = OfflinePlanner()
    result: dict[str, Any] = {"name": name, "session_id": None, "turns": [], "asked": [], "seen": [], "errors": [],
                              "open_ms": None, "sign_ms": None, "signed_version": None, "start": time.monotonic()}
    try:
        started = time.perf_counter()
        conversation = Conversation.start(settings, study, store=store, owner=name, title=f"bench {name}")
        result["open_ms"] = (time.perf_counter() - started) * 1000
        result["session_id"] = conversation.session_id
    except Exception as error:  # noqa: BLE001 — every failure is counted and reported, not raised
        result["errors"].append(f"open: {type(error).__name__}: {error}")
        result["end"] = time.monotonic()
        return result
    for message in messages:
        if think_s > 0:
            time.sleep(think_s * rng.uniform(0.5, 1.5))
        events = []
        writes_before = _writes_ms()
        started = time.perf_counter()
        try:
            for event in conversation.ask(message, backend):
                events.append(event)  # noqa: PERF402 — one by one: a turn that raises keeps what it yielded
        except Exception as error:  # noqa: BLE001
            result["errors"].append(f"{message!r}: {type(error).__name__}: {error}")
        elapsed = (time.perf_counter() - started) * 1000
        if not events:
            continue  # refused before anything was recorded: nothing to find in the store
        result["asked"].append(message)
        result["seen"].extend(e.kind for e in events if e.kind != "assistant_delta")
        result["turns"].append({"message": message, "ms": elapsed, "writes_ms": _writes_ms() - writes_before})
        last = events[-1]
        if not (isinstance(last, TurnFinished) and last.ok):
            why = next((e.message for e in events if isinstance(e, TurnError)), f"ended with {last.kind}")
            result["errors"].append(f"{message!r}: turn not ok: {why}")
    try:
        started = time.perf_counter()
        # The reader writes the Impression (Loupe leaves it to them when its search found nothing), then signs.
        reports.clinician_edit(conversation, [{"op": "set_section", "section": "impression", "text": "Read."}],
                               name=f"Dr {name}", reason="impression")
        signed = reports.sign(conversation, reports.history(conversation).current.version, name=f"Dr {name}")
        result["sign_ms"] = (time.perf_counter() - started) * 1000
        result["signed_version"] = signed.version
    except Exception as error:  # noqa: BLE001
        result["errors"].append(f"sign: {type(error).__name__}: {error}")
    conversation.ctx.close()
    result["end"] = time.monotonic()
    return result


def _warm_up(settings: LoupeSettings, study: Path, messages: list[str]) -> None:
    """One untimed clinician without a store: imports, caches, the study in the OS file cache."""
    _clinician(settings, None, study, "warm-up", messages, 0.0, 0)


def _serve(settings: LoupeSettings, study: Path, names: list[str], messages: list[str], think_s: float,
           wait_for_go: Callable[[], None]) -> list[dict[str, Any]]:
    """Serve ``names`` from threads of this process, all starting once ``wait_for_go`` returns."""
    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    try:
        results: list[dict[str, Any] | None] = [None] * len(names)
        gate = threading.Event()

        def run(index: int) -> None:
            gate.wait()
            results[index] = _clinician(settings, store, study, names[index], messages, think_s, seed=index + 1)

        threads = [threading.Thread(target=run, args=(i,), name=name, daemon=True) for i, name in enumerate(names)]
        for thread in threads:
            thread.start()
        wait_for_go()
        gate.set()
        for thread in threads:
            thread.join()
        return [r for r in results if r is not None]
    finally:
        store.close()


def _app_process(data_dir: str, db_url: str | None, study: str, names: list[str], messages: list[str],
                 think_s: float, outbox, go) -> None:
    """An app process: warm up, say it is ready, serve its clinicians when told, send their results."""
    warnings.filterwarnings("ignore", module="pydicom")
    try:
        settings = LoupeSettings(_env_file=None, data_dir=Path(data_dir), db_url=db_url)
        _time_store_writes()
        _warm_up(settings, Path(study), messages)

        def wait_for_go() -> None:
            outbox.put(("ready", os.getpid(), None))
            go.wait()

        outbox.put(("done", os.getpid(), _serve(settings, Path(study), names, messages, think_s, wait_for_go)))
    except BaseException:  # noqa: BLE001 — the parent reports it
        outbox.put(("failed", os.getpid(), traceback.format_exc()))


# -- a configuration ---------------------------------------------------------------------------------------


@dataclass
class Row:
    database: str
    processes: int
    clinicians: int
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    lost: int = 0
    bad_sessions: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [t["ms"] for r in self.results for t in r["turns"]]

    @property
    def errors(self) -> list[str]:
        return [f"{r['name']}: {e}" for r in self.results for e in r["errors"]]

    @property
    def turns(self) -> int:
        return len(self.latencies)

    def p(self, q: int, values: list[float] | None = None) -> float:
        return _percentile(self.latencies if values is None else values, q)

    @property
    def met(self) -> bool:
        return (bool(self.latencies) and self.p(95) < TARGET_P95_MS and not self.errors and self.lost == 0
                and not self.bad_sessions)


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _run_processes(data_dir: Path, db_url: str | None, study: Path, names: list[str], messages: list[str],
                   processes: int, think_s: float) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    """Start the app processes, let every clinician go at once, and collect what they did."""
    ctx = mp.get_context("spawn")
    outbox, go = ctx.Queue(), ctx.Event()
    groups = [names[p::processes] for p in range(processes)]
    workers = [ctx.Process(target=_app_process, name=f"loupe-app-{p}", daemon=True,
                           args=(str(data_dir), db_url, str(study), group, messages, think_s, outbox, go))
               for p, group in enumerate(groups)]
    results: list[dict[str, Any]] = []
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + RUN_TIMEOUT_S

        def receive(kind: str) -> Any:
            while True:
                try:
                    got, pid, payload = outbox.get(timeout=max(1.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise SystemExit(f"the app processes did not finish within {RUN_TIMEOUT_S} s") from None
                if got == "failed":
                    raise SystemExit(f"app process {pid} failed:\n{payload}")
                if got == kind:
                    return payload

        for _ in workers:
            receive("ready")
        load_before = os.getloadavg()[0]
        go.set()
        for _ in workers:
            results.extend(receive("done"))
        load_after = os.getloadavg()[0]
        for worker in workers:
            worker.join(timeout=60)
    finally:
        for worker in workers:  # only on failure: the processes this configuration started
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
    return results, (load_before, load_after)


def _verify(row: Row, store: Store) -> None:
    """Read every session back from the database and compare it with what its clinician saw."""
    for result in row.results:
        session_id = result["session_id"]
        if session_id is None:
            continue  # the study did not open: counted as an error already
        stored = [e["kind"] for e in store.events(session_id)]
        seen = result["seen"]
        row.lost += sum((Counter(seen) - Counter(stored)).values())
        problems = []
        turns = len(result["asked"])
        if stored.count("turn_started") != turns or stored.count("turn_finished") != turns:
            problems.append(f"{stored.count('turn_started')} turn_started / {stored.count('turn_finished')} "
                            f"turn_finished stored for {turns} turns")
        if stored != seen:
            problems.append("stored events differ from those received")
        history = store.history(session_id)
        roles = [c.get("role") for c in history]
        asked = [c["parts"][0].get("text") for c in history if c.get("role") == "user"]
        if roles != ["user", "model"] * turns or asked != result["asked"]:
            problems.append(f"history of {len(history)} contents does not alternate user/model over the "
                            f"{turns} messages asked")
        tool_events = sum(k in ("tool_finished", "tool_failed") for k in stored)
        if len(store.tool_calls(session_id)) != tool_events:
            problems.append(f"{len(store.tool_calls(session_id))} tool-call rows for {tool_events} tool events")
        if result["signed_version"] is not None and not any(
                v.version == result["signed_version"] and v.status == "signed"
                for v in store.report_versions(session_id)):
            problems.append(f"signed version {result['signed_version']} not stored as signed")
        if problems:
            row.bad_sessions.append(f"{result['name']} ({session_id[:8]}): " + "; ".join(problems))


def _configuration(database: str, db_url: str | None, processes: int, names: list[str], study: Path,
                   messages: list[str], think_s: float) -> Row:
    row = Row(database, processes, len(names))
    with tempfile.TemporaryDirectory(prefix="loupe-bench-store-") as folder:
        data_dir = Path(folder) / "data"
        Store.for_data_dir(data_dir, db_url).close()  # the schema, as the first server to start makes it
        row.results, row.load = _run_processes(data_dir, db_url, study, names, messages, processes, think_s)
        _check_all_served(row, names)
        store = Store.for_data_dir(data_dir, db_url)
        try:
            _verify(row, store)
        finally:
            store.close()
    row.wall_s = max(r["end"] for r in row.results) - min(r["start"] for r in row.results)
    return row


def _check_all_served(row: Row, names: list[str]) -> None:
    served = sorted(r["name"] for r in row.results)
    if served != sorted(names):
        raise SystemExit(f"{row.database} x {row.processes}: {len(served)} of {len(names)} clinicians came back")


def _baseline(study: Path, messages: list[str], runs: int) -> Row:
    """One clinician at a time, in this process, on SQLite (``runs`` sessions one after another)."""
    _time_store_writes()
    row = Row("SQLite (baseline)", 1, 1)
    with tempfile.TemporaryDirectory(prefix="loupe-bench-store-") as folder:
        settings = LoupeSettings(_env_file=None, data_dir=Path(folder) / "data")
        _warm_up(settings, study, messages)
        store = Store.for_data_dir(settings.data_dir)
        try:
            load_before = os.getloadavg()[0]
            row.results = [_clinician(settings, store, study, f"dr-base-{i}", messages, 0.0, i) for i in range(runs)]
            row.load = (load_before, os.getloadavg()[0])
            _verify(row, store)
        finally:
            store.close()
    row.wall_s = sum(r["end"] - r["start"] for r in row.results)
    return row


# -- the tables ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _tables(rows: list[Row], baseline: Row, study_label: str, messages: list[str], think_s: float,
            skipped: list[str]) -> None:
    base_p50 = baseline.p(50)
    pacing = "back to back (no think time)" if think_s <= 0 else f"with {think_s:g} s ± 50 % think time before each turn"
    print(f"\nSimulated clinicians on the offline backend, all starting together, asking {pacing}: open "
          f"{study_label}, {len(messages) - 1} turns + \"{DRAFT}\", sign. Baseline: one clinician at a time in this "
          f"process on SQLite, {len(baseline.results)} sessions (turn p50 {base_p50:.0f} ms). "
          f"Target: p95 < {TARGET_P95_MS / 1000:g} s, 0 errors, 0 lost.\n")
    print("| database | app processes | clinicians | turns | turns/s | p50 ms | p95 ms | p95 / base p50 | errors "
          "| lost events | store checks | target met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for row in [baseline, *rows]:
        checks = "ok" if not row.bad_sessions else f"{len(row.bad_sessions)} sessions bad"
        print(f"| {row.database} | {row.processes} | {row.clinicians} | {row.turns} | "
              f"{_fmt(row.turns / row.wall_s if row.wall_s else None, 1)} | {_fmt(row.p(50))} | {_fmt(row.p(95))} | "
              f"{row.p(95) / base_p50:.1f}× | {len(row.errors)} | {row.lost} | {checks} | "
              f"{'yes' if row.met else 'no'} |")
    for note in skipped:
        print(f"\n{note}")

    print("\nAround the turns: study open and sign-off per clinician; wall time per turn inside store write "
          "transactions (includes waiting for the database's write lock and for the GIL); the run's wall time "
          "and the 1-minute load average before → after it.\n")
    print("| database | app processes | open p50 ms | open p95 ms | sign p95 ms | writes p50 ms/turn | "
          "writes p95 ms/turn | slowest turn ms | wall s | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in [baseline, *rows]:
        opens = [r["open_ms"] for r in row.results if r["open_ms"] is not None]
        signs = [r["sign_ms"] for r in row.results if r["sign_ms"] is not None]
        writes = [t["writes_ms"] for r in row.results for t in r["turns"]]
        print(f"| {row.database} | {row.processes} | {_fmt(_percentile(opens, 50))} | {_fmt(_percentile(opens, 95))} | "
              f"{_fmt(_percentile(signs, 95))} | {_fmt(_percentile(writes, 50))} | {_fmt(_percentile(writes, 95))} | "
              f"{_fmt(max(row.latencies, default=None))} | {row.wall_s:.1f} | "
              f"{row.load[0]:.2f} → {row.load[1]:.2f} |")

    print("\np95 turn latency (ms) per message\n")
    labels = [f"{r.database} × {r.processes}" for r in [baseline, *rows]]
    print("| message | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for message in messages:
        cells = [_fmt(_percentile([t["ms"] for res in r.results for t in res["turns"] if t["message"] == message], 95))
                 for r in [baseline, *rows]]
        print(f"| {message} | " + " | ".join(cells) + " |")

    problems = [(f"{r.database} × {r.processes}", p) for r in [baseline, *rows] for p in [*r.errors, *r.bad_sessions]]
    if problems:
        print(f"\n{len(problems)} errors or bad sessions (first 20):")
        for label, problem in problems[:20]:
            print(f"- {label}: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinicians", type=int, default=None, help="simulated clinicians per configuration (20)")
    parser.add_argument("--turns", type=int, default=None, help=f"turns before the draft (5, at most {len(MESSAGES)})")
    parser.add_argument("--think", type=float, default=0.0, help="mean think time before each turn, s (0)")
    parser.add_argument("--baseline-runs", type=int, default=3, help="baseline sessions, one after another (3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 clinicians, 2 turns + the draft")
    args = parser.parse_args()
    clinicians = args.clinicians or (4 if args.quick else 20)
    turns = min(args.turns or (2 if args.quick else 5), len(MESSAGES))
    if clinicians < 1 or turns < 1:
        parser.error("--clinicians and --turns must be at least 1")
    messages = [*MESSAGES[:turns], DRAFT]
    study, study_label = _study()
    names = [f"dr-{i:02d}" for i in range(clinicians)]
    began = time.monotonic()

    print("  baseline: one clinician at a time, in this process, SQLite ...", file=sys.stderr)
    baseline = _baseline(study, messages, args.baseline_runs)
    rows: list[Row] = []
    for processes in (1, 2):
        print(f"  SQLite, {processes} app process(es), {clinicians} clinicians ...", file=sys.stderr)
        rows.append(_configuration("SQLite", None, processes, names, study, messages, args.think))

    skipped = []
    try:
        from tests.postgres import PostgresServer

        server = PostgresServer()
    except RuntimeError as error:
        skipped.append(f"PostgreSQL rows skipped: {error}.")
    else:
        try:
            server.start()
        except Exception as error:  # noqa: BLE001
            server.stop()
            skipped.append(f"PostgreSQL rows skipped: the server did not start ({error}).")
        else:
            try:
                for processes in (1, 2):
                    print(f"  PostgreSQL, {processes} app process(es), {clinicians} clinicians ...", file=sys.stderr)
                    rows.append(_configuration("PostgreSQL", server.new_database(), processes, names, study,
                                               messages, args.think))
            finally:
                server.stop()

    _tables(rows, baseline, study_label, messages, args.think, skipped)
    print(f"\nWhole benchmark: {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
