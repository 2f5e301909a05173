"""How long Loupe's DICOMweb calls take against a real PACS: search, list, retrieve, store.

What is measured
----------------
The benchmark starts its own throwaway Orthanc (``tests/orthanc.py``: Debian's ``orthanc`` and
``orthanc-dicomweb``, loopback only, authentication on) and seeds it by STOW-RS with real files:
the 8 CT slices of LIDC-IDRI-0002 from the shared evaluation data (512 x 512, one series) and
pydicom's ``CT_small.dcm`` and ``MR_small.dcm`` (patients ``CompressedSamples^CT1`` / ``^MR1``).
Every row goes through Loupe's own code in ``agent.pacs`` with one ``PacsConnection`` (one
``requests`` session, so HTTP keep-alive, as in one Loupe session):

* QIDO study search by patient id (``search_studies``, ``StudyQuery(patient_id=...)``), and by
  patient name with a wildcard (``StudyQuery(patient_name="compressed*")``, two studies);
* series listing (``series_of``) and instance listing (``instances_of``) of the LIDC study;
* retrieve (``retrieve_series``: the series in one streamed WADO-RS request) of the 8-slice series into a fresh
  empty data folder each run, and the re-open of the same series from the stored copy (no
  request to the PACS is expected: the "HTTP requests" column counts them);
* store (``store_in_study``: one STOW-RS call, then a QIDO search per series to confirm) of a
  Loupe-made document: the DICOM Encapsulated PDF of a small draft report on ``CT_small.dcm``
  (``tools.report.encapsulated_pdf``, ~35 kB), one per call and four per call. Each run stores
  new instances (new SOP and series UIDs); building the documents is outside the timing.

The baseline is one bare ``requests.get(pacs.url + "/system", auth=...)`` round trip to the same
Orthanc in the same process (a new TCP connection each time, no session), the smallest
authenticated HTTP request the server answers; "ratio" = row median / baseline median, so the
ratios are comparable across machines. "per instance" divides by the instances listed, retrieved
or stored.

How to read it
--------------
Medians over ``--runs`` timed runs (``time.perf_counter``) after one untimed warm-up run per row;
the baseline median is over 5 x ``--runs`` round trips. Orthanc runs on the same machine, so
these are server + client costs without network latency: against a hospital PACS, add about one
network round trip per HTTP request (the request column). ``instances_of`` asks for the remaining
results until a page comes back empty, so a listing costs two requests even when one page holds
everything; the store's confirmation does the same per series. When the shared evaluation data or
``/usr/sbin/Orthanc`` is missing, the benchmark says so and exits without timing anything.

Run: ``.venv/bin/python bench/bench_pacs.py [--runs N]`` (default 5; about 10 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pydicom.data
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.pacs.client import PacsConnection  # noqa: E402
from agent.pacs.retrieve import retrieve_series  # noqa: E402
from agent.pacs.search import StudyQuery, instances_of, search_studies, series_of  # noqa: E402
from agent.pacs.send import store_in_study  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from tests.orthanc import PASSWORD, USER, OrthancServer, orthanc_installed  # noqa: E402

SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", ROOT.parent / "shared"))
LIDC = SHARED / "data" / "eval" / "lidc_ct" / "LIDC-IDRI-0002"

warnings.filterwarnings("ignore", module="pydicom")  # the deliberately odd pydicom test files


def _pydicom_file(name: str) -> Path:
    found = pydicom.data.get_testdata_file(name, download=False)
    if found is None:
        raise SystemExit(f"pydicom test file {name} is not installed")
    return Path(found)


def _seed(pacs: OrthancServer, paths: list[Path]) -> None:
    pacs.seed(paths)
    if pacs.instance_count() != len(paths):
        raise SystemExit("Orthanc did not keep every seed file")


class _Counted:
    """Counts the HTTP requests a ``requests.Session`` makes (wraps its ``request`` method)."""

    def __init__(self, session: requests.Session) -> None:
        self.count = 0
        self._request = session.request
        session.request = self  # type: ignore[method-assign]

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self._request(*args, **kwargs)


class Row:
    def __init__(self, label: str, per: int | None = None) -> None:
        self.label, self.per = label, per
        self.times: list[float] = []
        self.requests: list[int] = []


def _timed(row: Row, counter: _Counted, runs: int, call: Callable[[], object],
           setup: Callable[[], object] | None = None) -> Row:
    """One untimed warm-up, then ``runs`` timed calls; ``setup()`` (untimed) before each call,
    its result passed to ``call``."""
    for run in range(runs + 1):
        prepared = setup() if setup is not None else None
        before = counter.count
        start = time.perf_counter()
        result = call(prepared) if setup is not None else call()
        elapsed = time.perf_counter() - start
        if run:  # run 0 is the warm-up
            row.times.append(elapsed)
            row.requests.append(counter.count - before)
        _check(row.label, result)
    return row


def _check(label: str, result: object) -> None:
    """Each row must have done what it claims, or its time means nothing."""
    if isinstance(result, list) and not result:
        raise SystemExit(f"{label}: the PACS returned nothing")


def _pdf_documents(source: Path, count: int) -> Callable[[], list[tuple[str, pydicom.Dataset]]]:
    """A maker of ``count`` fresh Encapsulated PDF data sets of a draft report on ``source``."""
    from tools.report.document import ClinicalReport, StudySummary
    from tools.report.encapsulated_pdf import encapsulated_pdf
    from tools.report.pdf import report_pdf
    from tools.study import open_study

    study = open_study(source)
    report = ClinicalReport(study_id="bench", study=StudySummary(modality="CT", technique="CT, 128×128 px, 1 slice"),
                            impression="No focal abnormality on this benchmark image.")
    pdf = report_pdf(report)

    def make() -> list[tuple[str, pydicom.Dataset]]:
        return [("PDF", encapsulated_pdf(pdf, report, study, {})) for _ in range(count)]

    make.pdf_bytes = len(pdf)  # type: ignore[attr-defined]
    make.study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)  # type: ignore[attr-defined]
    return make


def _table(rows: list[Row], baseline: float, runs: int) -> None:
    print(f"\nLoupe's DICOMweb calls against a local Orthanc, median of {runs} runs after a warm-up; "
          f"baseline = one bare authenticated GET /system ({baseline * 1000:.2f} ms)\n")
    print("| operation | median ms | per instance ms | HTTP requests | ratio to baseline |")
    print("|---|---:|---:|---:|---:|")
    print(f"| baseline: requests.get /system | {baseline * 1000:.2f} | | 1 | 1.0× |")
    for row in rows:
        median = statistics.median(row.times)
        per = f"{median * 1000 / row.per:.2f}" if row.per else ""
        calls = statistics.median(row.requests)
        ratio = median / baseline
        print(f"| {row.label} | {median * 1000:.2f} | {per} | {calls:g} | {ratio:.{1 if ratio >= 1 else 3}f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not orthanc_installed():
        print("Orthanc is not installed (/usr/sbin/Orthanc and the DICOMweb plugin, Debian's orthanc and "
              "orthanc-dicomweb): nothing to measure.")
        return
    slices = sorted(LIDC.glob("*.dcm"))
    if len(slices) != 8:
        print(f"The 8 LIDC-IDRI-0002 slices were not found in {LIDC} (set LOUPE_SHARED_DIR): nothing to measure.")
        return
    ct_small, mr_small = _pydicom_file("CT_small.dcm"), _pydicom_file("MR_small.dcm")
    lidc = pydicom.dcmread(slices[0], stop_before_pixels=True)
    lidc_study, lidc_series, lidc_patient = (str(lidc.StudyInstanceUID), str(lidc.SeriesInstanceUID),
                                             str(lidc.PatientID))
    one_pdf, four_pdfs = _pdf_documents(ct_small, 1), _pdf_documents(ct_small, 4)
    runs = args.runs
    rows: list[Row] = []

    with OrthancServer() as pacs, tempfile.TemporaryDirectory(prefix="loupe-bench-pacs-") as scratch:
        print(f"  seeding Orthanc at {pacs.url} ...", file=sys.stderr)
        _seed(pacs, [*slices, ct_small, mr_small])
        scratch_dir = Path(scratch)

        def settings(data_dir: Path) -> LoupeSettings:
            return LoupeSettings(_env_file=None, dicomweb_url=pacs.dicomweb_url, dicomweb_user=USER,
                                 dicomweb_password=PASSWORD, data_dir=data_dir)

        connection = PacsConnection(settings(scratch_dir / "unused"))
        counter = _Counted(connection.client._session)

        def baseline_once() -> float:
            start = time.perf_counter()
            requests.get(pacs.url + "/system", auth=(USER, PASSWORD), timeout=10).raise_for_status()
            return time.perf_counter() - start

        baseline_once()  # warm-up
        baseline = statistics.median(baseline_once() for _ in range(5 * runs))

        print("  timing QIDO searches and listings ...", file=sys.stderr)
        rows.append(_timed(Row("QIDO study search, patient id"), counter, runs,
                           lambda: search_studies(connection, StudyQuery(patient_id=lidc_patient))))
        rows.append(_timed(Row('QIDO study search, patient name "compressed*" (2 studies)'), counter, runs,
                           lambda: search_studies(connection, StudyQuery(patient_name="compressed*"))))
        found = search_studies(connection, StudyQuery(patient_name="compressed*"))
        if len(found) != 2:
            raise SystemExit(f'the search for "compressed*" found {len(found)} studies, not 2')
        rows.append(_timed(Row("QIDO series listing (series_of)"), counter, runs,
                           lambda: series_of(connection, lidc_study)))
        rows.append(_timed(Row("QIDO instance listing (instances_of, 8 instances)", 8), counter, runs,
                           lambda: instances_of(connection, lidc_study, lidc_series)))

        print("  timing retrieval ...", file=sys.stderr)
        fresh = iter(range(1_000_000))

        def empty_settings() -> LoupeSettings:
            return settings(scratch_dir / f"retrieve-{next(fresh)}")

        def retrieve(where: LoupeSettings):
            result = retrieve_series(connection, where, lidc_study, lidc_series)
            if result.fetched != 8 or result.instances != 8:
                raise SystemExit(f"retrieve fetched {result.fetched} of {result.instances} instances, not 8")
            return result

        rows.append(_timed(Row("WADO retrieve 8-slice series, empty data folder", 8), counter, runs, retrieve,
                           setup=empty_settings))
        stored_settings = settings(scratch_dir / "stored")
        retrieve(stored_settings)

        def reopen():
            result = retrieve_series(connection, stored_settings, lidc_study, lidc_series)
            if result.fetched != 0 or result.instances != 8:
                raise SystemExit(f"re-open fetched {result.fetched} instances; the stored copy was not used")
            return result

        rows.append(_timed(Row("re-open 8-slice series from the stored copy", 8), counter, runs, reopen))

        print("  timing STOW ...", file=sys.stderr)
        before = pacs.instance_count()
        rows.append(_timed(Row(f"STOW + QIDO confirm, 1 Encapsulated PDF ({one_pdf.pdf_bytes // 1024} kB)", 1),
                           counter, runs, lambda docs: store_in_study(connection, one_pdf.study_uid, docs),
                           setup=one_pdf))
        rows.append(_timed(Row("STOW + QIDO confirm, 4 Encapsulated PDFs in one call", 4), counter, runs,
                           lambda docs: store_in_study(connection, four_pdfs.study_uid, docs), setup=four_pdfs))
        stored = pacs.instance_count() - before
        if stored != 5 * (runs + 1):
            raise SystemExit(f"Orthanc holds {stored} new instances after the stores, not {5 * (runs + 1)}")

    _table(rows, baseline, runs)


if __name__ == "__main__":
    main()
