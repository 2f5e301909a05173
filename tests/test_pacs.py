"""The PACS over DICOMweb, against a real Orthanc (tests/orthanc.py): search, open, analyse,
report, send back, and find the results in the study; and each failure as one sentence."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests

from agent.pacs.client import PacsConnection, PacsError, match_value
from agent.pacs.retrieve import retrieve_series
from agent.pacs.search import StudyQuery, search_studies, series_of, study_date_range
from agent.settings import LoupeSettings
from tests.conftest import EVAL_DIR, pydicom_file, run_cli
from tests.orthanc import PASSWORD, USER
from tools.errors import StudyTooLargeError
from tools.report.document import ReportError

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.490157381160200744295382098329"
CT_SMALL = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
MR_SMALL = pydicom.dcmread(pydicom_file("MR_small.dcm"), stop_before_pixels=True)
SR_ONLY = pydicom.dcmread(pydicom_file("test-SR.dcm"), stop_before_pixels=True)

pytestmark = pytest.mark.usefixtures("isolated_cli")


def settings(tmp_path: Path, **overrides) -> LoupeSettings:
    return LoupeSettings(data_dir=tmp_path / "data", **overrides)


def qido(orthanc, path: str, **params) -> list[dict]:
    """Orthanc's own answer, independent of the code under test."""
    response = requests.get(f"{orthanc.dicomweb_url}/{path}", params=params, auth=(USER, PASSWORD), timeout=10)
    response.raise_for_status()
    return response.json() if response.content else []


# -- search ---------------------------------------------------------------------------------------


def test_search_by_each_key(pacs_env, tmp_path):
    connection = PacsConnection(LoupeSettings())

    def uids(**query) -> set[str]:
        return {m.study_uid for m in search_studies(connection, StudyQuery(**query))}

    both = {str(CT_SMALL.StudyInstanceUID), str(MR_SMALL.StudyInstanceUID)}
    assert uids(patient_id="LIDC-IDRI-0002") == {LIDC_STUDY}
    assert uids(patient_name="compressed*") == both  # a wildcard, any case
    assert uids(patient_name="CompressedSamples^MR1") == {str(MR_SMALL.StudyInstanceUID)}  # DICOM's own form
    assert uids(patient_name="compressedsamples, ct1") == {str(CT_SMALL.StudyInstanceUID)}  # as typed
    assert uids(accession="2819497684894126") == {LIDC_STUDY}
    assert uids(modality="mr") == {str(MR_SMALL.StudyInstanceUID)}
    assert uids(date="20040101-20041231") == both
    assert uids(date="20000101") == {LIDC_STUDY}
    assert uids(description="e+1") == {str(CT_SMALL.StudyInstanceUID)}  # '+' would otherwise be mangled
    assert uids(patient_id="NOBODY") == set()


def test_searches_log_neither_patient_identity_nor_secrets(pacs_env, caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    search_studies(PacsConnection(LoupeSettings()), StudyQuery(patient_name="CompressedSamples*", patient_id="4MR1"))
    monkeypatch.setenv("LOUPE_DICOMWEB_TOKEN", "token-secret")
    with pytest.raises(PacsError):
        search_studies(PacsConnection(LoupeSettings()), StudyQuery(patient_id="4MR1"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in ("CompressedSamples", "4MR1", PASSWORD, "token-secret"):
        assert secret not in logged


def test_search_results_list_what_the_clinician_needs(pacs_env):
    [match] = search_studies(PacsConnection(LoupeSettings()), StudyQuery(patient_id="LIDC-IDRI-0002"))
    assert (match.study_date, match.modalities[0], match.instances >= 8, match.series >= 1) == ("20000101", "CT", True, True)
    [mr] = search_studies(PacsConnection(LoupeSettings()), StudyQuery(patient_id="4MR1"))
    assert (mr.patient_name, mr.patient_id) == ("CompressedSamples, MR1", "4MR1")


def test_pacs_search_command_json_contract(pacs_env, capsys):
    code, out, err = run_cli(capsys, "pacs", "search", "--patient-name", "Compressed*", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert len(found) == 2
    for item in found:
        assert {"study_uid", "study_date", "modalities", "description", "series", "instances"} <= set(item)
    code, out, _ = run_cli(capsys, "pacs", "search", "--modality", "CT", "--date", "20000101-20001231")
    assert code == 0 and f"pacs:{LIDC_STUDY}" in out
    code, out, _ = run_cli(capsys, "pacs", "search", "--patient-id", "NOBODY")
    assert (code, out.strip()) == (0, "No study on the PACS matches.")
    code, out, _ = run_cli(capsys, "pacs", "search", "--patient-id", "NOBODY", "--json")
    assert json.loads(out) == []


@pytest.mark.parametrize("text", ["2004", "20041332", "20041231-20040101", "2004-01-01", "-"])
def test_a_date_that_is_not_one_is_refused(text):
    with pytest.raises(PacsError):
        study_date_range(text)


def test_match_values_keep_wildcards_and_nothing_that_needs_escaping():
    assert match_value("DOE*") == "DOE*"
    assert match_value("CT CHEST+") == "CT?CHEST?"
    assert match_value("Müller") == "M?ller"


# -- open -----------------------------------------------------------------------------------------


def test_every_study_command_takes_a_pacs_reference(pacs_env, capsys, tmp_path):
    code, out, err = run_cli(capsys, "info", f"pacs:{LIDC_STUDY}", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["modality"], summary["frames"], summary["rows"]) == ("CT", 8, 512)
    assert "8 image(s) retrieved" in err
    code, out, err = run_cli(capsys, "view", f"pacs:{LIDC_STUDY}", "--out", tmp_path / "v.png", "--frame", "3")
    assert code == 0 and "stored copy" in err  # the second time: no download
    code, out, err = run_cli(capsys, "analyze", f"pacs:{LIDC_STUDY}", "--out", tmp_path / "a", "--json")
    assert code == 0, err
    assert (tmp_path / "a" / "overlay.png").exists() and json.loads(out)["findings"]
    [series] = [s for s in series_of(PacsConnection(LoupeSettings()), LIDC_STUDY) if s.is_image]
    code, out, err = run_cli(capsys, "ask", f"pacs:{LIDC_STUDY}/{series.series_uid}", "What is the modality?",
                             "--backend", "offline", "--json")
    assert code == 0, err
    assert json.loads(out)["answer"]


def test_a_series_reference_opens_that_series(pacs_env, capsys):
    code, out, err = run_cli(capsys, "info", f"pacs:{CT_SMALL.StudyInstanceUID}/{CT_SMALL.SeriesInstanceUID}",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == CT_SMALL.Rows


@pytest.mark.parametrize(("reference", "sentence"), [
    (f"pacs:{SR_ONLY.StudyInstanceUID}", "holds no images (only SR); nothing to open"),
    ("pacs:1.2.3.4.5", "The PACS has no study 1.2.3.4.5"),
    (f"pacs:{LIDC_STUDY}/1.2.3", "has no series 1.2.3"),
    ("pacs:not-a-uid", "is not a DICOM UID"),
    ("pacs:", "Give the study after 'pacs:'"),
])
def test_what_cannot_be_opened_is_one_sentence(pacs_env, capsys, reference, sentence):
    code, out, err = run_cli(capsys, "info", reference)
    assert code == 2 and sentence in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_wrong_credentials_say_so_without_the_secret(pacs_env, capsys, monkeypatch):
    monkeypatch.setenv("LOUPE_DICOMWEB_PASSWORD", "wrong-secret")
    code, _, err = run_cli(capsys, "pacs", "search", "--patient-id", "LIDC-IDRI-0002")
    assert code == 2 and "refused Loupe's credentials (HTTP 401)" in err and "wrong-secret" not in err
    monkeypatch.delenv("LOUPE_DICOMWEB_PASSWORD")
    monkeypatch.delenv("LOUPE_DICOMWEB_USER")
    monkeypatch.setenv("LOUPE_DICOMWEB_TOKEN", "token-secret")  # Orthanc takes basic auth only: 401 too
    code, _, err = run_cli(capsys, "info", f"pacs:{LIDC_STUDY}")
    assert code == 2 and "HTTP 401" in err and "token-secret" not in err


def test_no_pacs_configured_is_one_sentence(capsys):
    code, _, err = run_cli(capsys, "info", f"pacs:{LIDC_STUDY}")
    assert code == 2 and "set LOUPE_DICOMWEB_URL" in err


def test_a_series_beyond_the_limits_is_refused_before_download(pacs_env, tmp_path):
    for limits in ({"max_files": 5}, {"max_total_pixels": 512 * 512 * 7}, {"max_frame_pixels": 512 * 511}):
        configured = settings(tmp_path, **limits)
        with pytest.raises(StudyTooLargeError, match="it was not downloaded"):
            retrieve_series(PacsConnection(configured), configured, LIDC_STUDY)
        assert not list((tmp_path / "data").rglob("*.dcm"))


def test_an_interrupted_retrieval_keeps_whole_files_only_and_resumes(pacs_env, tmp_path):
    configured = settings(tmp_path)
    connection = PacsConnection(configured)

    def interrupt_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt  # the clinician closed the app, the process was stopped

    with pytest.raises(KeyboardInterrupt):
        retrieve_series(connection, configured, LIDC_STUDY, progress=interrupt_after_three)
    kept = list((tmp_path / "data").rglob("*.dcm"))
    assert len(kept) == 3 and all(pydicom.dcmread(path).Rows == 512 for path in kept)
    assert not list((tmp_path / "data").rglob("*.complete.json"))  # not marked whole, so never opened
    seen = []
    resumed = retrieve_series(connection, configured, LIDC_STUDY, progress=lambda d, t: seen.append((d, t)))
    assert (resumed.instances, resumed.fetched, seen[-1]) == (8, 5, (8, 8))
    again = retrieve_series(connection, configured, LIDC_STUDY)
    assert (again.fetched, again.folder) == (0, resumed.folder)
    for lost in sorted(resumed.folder.glob("*.dcm"))[:2]:  # files gone from the stored copy
        lost.unlink()
    assert retrieve_series(connection, configured, LIDC_STUDY).fetched == 2  # only those, one by one


def test_the_stored_copy_opens_when_the_pacs_is_gone(pacs_env, tmp_path):
    configured = settings(tmp_path)
    first = retrieve_series(PacsConnection(configured), configured, str(MR_SMALL.StudyInstanceUID))
    connection = PacsConnection(configured)  # same PACS address, but now every request fails

    def down(*args, **kwargs):
        raise requests.ConnectionError("the PACS is down")

    connection.client._session.get = down
    again = retrieve_series(connection, configured, str(MR_SMALL.StudyInstanceUID))
    assert (again.folder, again.fetched) == (first.folder, 0)
    with pytest.raises(PacsError, match="could not be reached"):  # and what was never retrieved says so
        retrieve_series(connection, configured, LIDC_STUDY)


def test_paths_hold_no_uids(pacs_env, tmp_path):
    configured = settings(tmp_path)
    retrieved = retrieve_series(PacsConnection(configured), configured, LIDC_STUDY)
    for path in (tmp_path / "data").rglob("*"):
        assert "1.3.6.1.4.1" not in str(path.relative_to(tmp_path))
    assert retrieved.folder.is_dir()


# -- failures of the server itself: a loopback server that misbehaves on purpose ---------------


class MisbehavingPacs(http.server.ThreadingHTTPServer):
    def __init__(self, status: int, delay_s: float = 0.0):
        self.status, self.delay_s, self.hits = status, delay_s, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                self.hits += 1
                time.sleep(self.delay_s)
                handler.send_response(self.status)
                handler.send_header("Content-Type", "application/dicom+json")
                handler.end_headers()
                handler.wfile.write(b"[]")

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


@pytest.mark.parametrize(("status", "tries", "sentence"), [
    (503, 3, "answered HTTP 503"),
    (500, 3, "answered HTTP 500"),
    (400, 1, "answered HTTP 400"),
    (404, 1, "has no such item (HTTP 404)"),
    (403, 1, "refused Loupe's credentials (HTTP 403)"),
])
def test_retries_on_5xx_only(tmp_path, status, tries, sentence):
    server = MisbehavingPacs(status)
    try:
        configured = settings(tmp_path, dicomweb_url=server.url, dicomweb_retry_attempts=3, dicomweb_retry_initial_s=0)
        with pytest.raises(PacsError, match=re.escape(sentence)):
            search_studies(PacsConnection(configured), StudyQuery(patient_id="X"))
        assert server.hits == tries
    finally:
        server.shutdown()


def test_a_slow_pacs_is_a_timeout_sentence(tmp_path):
    server = MisbehavingPacs(200, delay_s=1.0)
    try:
        configured = settings(tmp_path, dicomweb_url=server.url, dicomweb_read_timeout_s=0.2,
                              dicomweb_retry_attempts=2, dicomweb_retry_initial_s=0)
        with pytest.raises(PacsError, match=r"did not answer within 0.2 s"):
            search_studies(PacsConnection(configured), StudyQuery(patient_id="X"))
        assert server.hits == 2
    finally:
        server.shutdown()


def test_an_unreachable_pacs_is_one_sentence(tmp_path, capsys, monkeypatch):
    server = MisbehavingPacs(200)
    url = server.url
    server.shutdown()
    server.server_close()  # nothing listens there now
    monkeypatch.setenv("LOUPE_DICOMWEB_URL", url)
    monkeypatch.setenv("LOUPE_DICOMWEB_RETRY_INITIAL_S", "0")
    code, _, err = run_cli(capsys, "pacs", "search", "--patient-id", "X")
    assert code == 2 and "could not be reached" in err


# -- report and send back -----------------------------------------------------------------------


def test_report_send_stores_sr_and_pdf_in_the_source_study(pacs_env, capsys, tmp_path):
    code, out, err = run_cli(capsys, "report", f"pacs:{CT_SMALL.StudyInstanceUID}", "--out", tmp_path / "out",
                             "--send")
    assert code == 0, err
    stored = dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("stored "))
    assert set(stored.values()) == {"narrative SR", "PDF"}
    local_pdf = pydicom.dcmread(tmp_path / "out" / "report-v1-draft-pdf.dcm")
    assert local_pdf.SOPInstanceUID in stored and "DRAFT" in local_pdf.DocumentTitle
    found = {item["00080018"]["Value"][0]
             for item in qido(pacs_env, f"studies/{CT_SMALL.StudyInstanceUID}/instances")}
    assert set(stored) <= found
    assert (tmp_path / "out" / "report-v1-draft-narrative-sr.dcm").exists()


def test_a_failed_store_exits_2_and_keeps_the_local_files(pacs_env, capsys, tmp_path, monkeypatch):
    code, out, err = run_cli(capsys, "report", f"pacs:{MR_SMALL.StudyInstanceUID}", "--out", tmp_path / "first")
    assert code == 0, err
    session = err.split("session: ")[1].split()[0]
    monkeypatch.setenv("LOUPE_DICOMWEB_PASSWORD", "wrong")
    code, out, err = run_cli(capsys, "report", "--session", session, "--out", tmp_path / "out", "--send")
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error:")] == [
        next(line for line in err.splitlines() if "refused Loupe's credentials" in line)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report-v1-draft-narrative-sr.dcm", "report-v1-draft-pdf.dcm", "report-v1-draft.json", "report-v1-draft.md",
        "report-v1-draft.pdf"]


def test_a_signed_report_with_measurements_round_trips_through_the_pacs(pacs_env, tmp_path):
    """Open from the PACS, analyse, report a measured nodule, sign, send; read the SR back with
    highdicom and find the same measurements; the PDF is there too, and both point at the CT."""
    from agent import reports
    from agent.analysis import analyse_current
    from agent.conversation import Conversation
    from agent.pacs_studies import open_from_pacs, send_report
    from agent.toolbox import run_tool

    configured = LoupeSettings()
    conversation = Conversation.start(configured)
    open_from_pacs(conversation, LIDC_STUDY)
    analyse_current(conversation.ctx)
    run_tool(conversation.ctx, "draft_report", {})
    measured = next(f for f in conversation.ctx.findings.values() if f.gaussian is not None)
    reports.clinician_edit(conversation, [{"op": "add_finding", "finding_id": measured.id},
                                          {"op": "set_section", "section": "impression", "text": "A nodule, F-listed."}],
                           name="Dr Test", reason="add the nodule and the impression")
    with pytest.raises(ReportError, match="is a draft"):
        send_report(conversation, reports.history(conversation).current.version, allow_draft=False)
    signed = reports.sign(conversation, reports.history(conversation).current.version, name="Dr Test")
    stored = send_report(conversation, signed.version, allow_draft=False)
    assert {s.description for s in stored} == {"measurement SR", "narrative SR", "PDF"}

    connection = PacsConnection(configured)
    by_what = {s.description: s for s in stored}
    sr_ref = by_what["measurement SR"]
    sr = connection.run(lambda c: c.retrieve_instance(LIDC_STUDY, sr_ref.series_instance_uid, sr_ref.sop_instance_uid),
                        "read back")
    assert (sr.StudyInstanceUID, sr.CompletionFlag, sr.VerificationFlag) == (LIDC_STUDY, "COMPLETE", "VERIFIED")
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    values = {m.name.meaning: round(float(m.value), 3) for m in groups[0].get_measurements()}
    report = reports.history(conversation).current
    size = report.findings[0].size
    assert values[next(k for k in values if "Long" in k or "Major" in k.title())] == round(size.major, 3)
    assert any(round(size.minor, 3) == v for v in values.values())
    sources = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert sources[0].ReferencedSOPInstanceUID in _instances(pacs_env, LIDC_STUDY)

    pdf_ref = by_what["PDF"]
    pdf = connection.run(lambda c: c.retrieve_instance(LIDC_STUDY, pdf_ref.series_instance_uid,
                                                       pdf_ref.sop_instance_uid), "read back")
    assert pdf.EncapsulatedDocument[:5] == b"%PDF-" and "signed" in pdf.DocumentTitle
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID in _instances(pacs_env, LIDC_STUDY)
    modalities = qido(pacs_env, "studies", StudyInstanceUID=LIDC_STUDY, includefield="ModalitiesInStudy")
    assert {"CT", "SR", "DOC"} <= set(modalities[0]["00080061"]["Value"])


def _instances(orthanc, study_uid: str) -> set[str]:
    return {item["00080018"]["Value"][0] for item in qido(orthanc, f"studies/{study_uid}/instances")}


def test_patient_identity_from_the_pacs_stays_out_of_the_model_and_the_session(pacs_env, fake, capsys,
                                                                              monkeypatch):
    """Searched, opened from the PACS and asked about through the real SDK and the fake Gemini:
    the patient's name and id reach neither the model nor the session's events and audit trail."""
    from tests.fake_gemini import text_reply

    monkeypatch.setenv("LOUPE_GEMINI_API_KEY", "test-key")
    code, out, _ = run_cli(capsys, "pacs", "search", "--patient-name", "compressed*mr1")
    assert "CompressedSamples, MR1 (4MR1)" in out  # the clinician sees who it is
    fake.script(text_reply("An MR image."))
    code, out, err = run_cli(capsys, "ask", f"pacs:{MR_SMALL.StudyInstanceUID}", "What modality is this?",
                             "--backend", "gemini", "--confirm-no-burned-in-text", "--json")
    assert code == 0, err
    assert len(fake.calls()) == 1
    sent = "\n".join(request.text() for request in fake.requests)
    for identity in ("CompressedSamples", "4MR1"):
        assert identity not in sent
    stored = _session_text(LoupeSettings().data_dir)
    assert "CompressedSamples" not in stored and "4MR1" not in stored


def _session_text(data_dir: Path) -> str:
    import sqlite3

    [database] = list(data_dir.glob("*.db")) or list(data_dir.rglob("*.db"))
    with sqlite3.connect(database) as db:
        rows = db.execute("select * from events").fetchall() + db.execute("select * from audit").fetchall()
    return json.dumps(rows, default=str)


def test_eval_ct_slices_are_what_was_seeded():
    """The seed is the shared data set read in place, not a copy."""
    assert (EVAL_DIR / "lidc_ct" / "LIDC-IDRI-0002").is_dir()
