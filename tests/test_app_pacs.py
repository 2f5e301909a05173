"""The app's PACS side (ui/pacs_panel.py, the report's Send to PACS) through Streamlit's AppTest,
against the real throwaway Orthanc of tests/conftest.py.

Other tests store SR and PDF series into the seeded studies during the session, so these tests
assert on image series and on the instances they sent themselves, never on series counts.
"""

from __future__ import annotations

import pytest
import requests
from streamlit.testing.v1 import AppTest

from tests.orthanc import PASSWORD, USER
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401 (fixtures)

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.490157381160200744295382098329"
CT_SMALL_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@pytest.fixture
def pacs_app(pacs_env, data_dir, media) -> AppTest:  # noqa: F811 (fixtures imported above)
    at = new_app()
    open_sections(at, "pacs_section_open")
    return at


def search_pacs(at: AppTest, **fields: str) -> None:
    for name, value in fields.items():
        at.text_input(key=f"pacs_{name}").set_value(value)
    at.button(key="pacs_search").click().run()
    assert_healthy(at)


def listed(at: AppTest) -> list[tuple[str, str]]:
    """The results as the sidebar lists them: (patient line, study line) per study."""
    choice = at.radio(key="pacs_study")
    return list(zip(choice.options, choice.proto.captions, strict=True))


def open_study(at: AppTest, study_uid: str) -> None:
    at.radio(key="pacs_study").set_value(study_uid)
    at.button(key="pacs_open_study").click().run()
    assert_healthy(at)


def sidebar_facts(at: AppTest) -> str:
    return " ".join(m.value for m in at.sidebar.markdown)


def test_no_pacs_configured_means_no_pacs_anywhere(data_dir, media):  # noqa: F811
    at = new_app()
    assert "Open from PACS" not in [e.label for e in at.expander]
    at.chat_input[0].set_value("Draft a report").run()
    assert_healthy(at)
    assert any("**Version 1 of 1 · DRAFT**" in m.value for m in at.markdown)
    assert "Send to PACS" not in [b.label for b in at.button]


def test_search_by_name_then_open_the_ct_study(pacs_app, data_dir):  # noqa: F811
    assert "**Frames** 10" in sidebar_facts(pacs_app)  # the sample study (a 10-slice chest CT), before
    search_pacs(pacs_app, patient_name="compressed*")
    patients = [patient for patient, _ in listed(pacs_app)]
    assert {"CompressedSamples, CT1 · 1CT1", "CompressedSamples, MR1 · 4MR1"} <= set(patients)
    open_study(pacs_app, CT_SMALL_STUDY)
    assert not pacs_app.error
    facts = sidebar_facts(pacs_app)
    assert "**Modality** CT" in facts and "**Frame** 1 of 1" in facts
    note = " ".join(s.value for s in pacs_app.sidebar.success)
    assert note.startswith("Opened series") and "1 image(s) retrieved" in note
    # The patient's name and id were on the screen only: not in the session's database or files.
    kept = [p for p in data_dir.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert kept and not [p for p in kept if b"CompressedSamples" in p.read_bytes() or b"1CT1" in p.read_bytes()]


def test_open_the_lidc_study_then_one_of_its_series(pacs_app):
    search_pacs(pacs_app, patient_id="LIDC-IDRI-0002")
    assert [patient.endswith(" · LIDC-IDRI-0002") for patient, _ in listed(pacs_app)] == [True]
    open_study(pacs_app, LIDC_STUDY)
    assert not pacs_app.error
    facts = sidebar_facts(pacs_app)
    assert "**Modality** CT" in facts and "**Frame** 1 of 8" in facts
    assert "8 image(s) retrieved" in pacs_app.sidebar.success[0].value
    pacs_app.button(key="pacs_list_series").click().run()
    choice = pacs_app.selectbox(key="pacs_series_choice")
    assert len(choice.options) == 1 and "8 image(s)" in choice.options[0]  # the image series only
    pacs_app.button(key="pacs_open_series").click().run()
    assert_healthy(pacs_app)
    assert not pacs_app.error
    assert "from the stored copy" in pacs_app.sidebar.success[0].value  # nothing fetched twice
    assert "**Frame** 1 of 8" in sidebar_facts(pacs_app)


def test_a_study_without_images_is_one_sentence_and_the_open_study_stays(pacs_app):
    search_pacs(pacs_app, description="OFFIS*")
    rows = pacs_app.session_state["pacs_results"]
    assert [row["modalities"] for row in rows] == [["SR"]]
    open_study(pacs_app, rows[0]["study_uid"])
    errors = [e.value for e in pacs_app.error]
    assert len(errors) == 1 and errors[0].endswith(".") and "holds no images" in errors[0]
    assert "**Frames** 10" in sidebar_facts(pacs_app)  # the sample study is still open
    assert not pacs_app.sidebar.success
    pacs_app.button(key="pacs_list_series").click().run()
    assert any(i.value == "This study has no image series to open." for i in pacs_app.sidebar.info)


def test_a_search_that_finds_nothing_or_a_bad_date_says_so(pacs_app):
    search_pacs(pacs_app, patient_id="NOBODY-HERE")
    assert any(i.value == "No study on the PACS matches." for i in pacs_app.sidebar.info)
    assert not pacs_app.radio
    search_pacs(pacs_app, patient_id="", date="20241301")  # checked before the PACS is asked
    assert [e.value for e in pacs_app.error] == ["'20241301' is not a calendar date (YYYYMMDD)."]


def test_a_wrong_password_is_the_credential_sentence(pacs_env, data_dir, media, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LOUPE_DICOMWEB_PASSWORD", "not-the-password")
    at = new_app()
    open_sections(at, "pacs_section_open")
    search_pacs(at, patient_id="LIDC-IDRI-0002")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "refused Loupe's credentials (HTTP 401)" in errors[0]
    assert "not-the-password" not in errors[0]
    assert "**Frames** 10" in sidebar_facts(at)  # the sample study is still open


def test_a_draft_goes_to_the_pacs_only_when_ticked_and_is_found_there(pacs_app, pacs_env):
    search_pacs(pacs_app, patient_id="1CT1")
    open_study(pacs_app, CT_SMALL_STUDY)
    pacs_app.chat_input[0].set_value("Draft a report").run()
    assert_healthy(pacs_app)
    assert any("**Version 1 of 1 · DRAFT**" in m.value for m in pacs_app.markdown)
    assert pacs_app.button(key="pacs_send-1").disabled, "a draft needs the checkbox first"
    pacs_app.checkbox(key="pacs_send_draft-1").check().run()
    pacs_app.button(key="pacs_send-1").click().run()
    assert_healthy(pacs_app)
    assert not pacs_app.error
    stored = pacs_app.session_state[f"pacs_sent-{pacs_app.query_params['chat']}-"
                                    f"{pacs_app.session_state['conversation'].ctx.current_study_id}-1"]
    assert {what for what, _ in stored} >= {"narrative SR", "PDF"}
    message = pacs_app.main.success[-1].value
    assert all(uid in message for _, uid in stored)
    assert set(_sop_uids_on_pacs(pacs_env.dicomweb_url, CT_SMALL_STUDY, "SR")) >= {
        uid for what, uid in stored if what.endswith("SR")}
    open_sections(pacs_app, "sign_off_open")  # a signed version goes without the checkbox
    pacs_app.text_input(key="signer_name").set_value("Dr Test").run()
    pacs_app.button(key="sign").click().run()  # Loupe found nothing: the Impression is the reader's
    assert any("no Impression yet" in e.value for e in pacs_app.error)
    open_sections(pacs_app, "edit_report_open")
    pacs_app.text_area(key="impression-1").set_value("Read by Dr Test.").run()
    pacs_app.button(key="save-1").click().run()
    pacs_app.button(key="sign").click().run()
    assert any("**Version 3 of 3 · SIGNED by Dr Test**" in m.value for m in pacs_app.markdown)
    assert not [c for c in pacs_app.checkbox if c.key == "pacs_send_draft-3"]
    pacs_app.button(key="pacs_send-3").click().run()
    assert_healthy(pacs_app)
    assert not pacs_app.error and "Stored on the PACS" in pacs_app.main.success[-1].value



def test_a_png_report_offers_no_send_to_pacs(pacs_app, eval_dir):
    from agent.workspace import open_uploads

    open_uploads(pacs_app.session_state["conversation"], [("screenshot.png", (eval_dir / "busi" / "benign_030.png")
                                                          .read_bytes())])
    pacs_app.chat_input[0].set_value("Draft a report").run()
    assert_healthy(pacs_app)
    assert any("**Version 1 of 1 · DRAFT**" in m.value for m in pacs_app.markdown)
    assert any("no DICOM SR" in c.value for c in pacs_app.main.caption)  # the export note says why
    assert "Send to PACS" not in [b.label for b in pacs_app.button]

def _sop_uids_on_pacs(dicomweb_url: str, study_uid: str, modality: str) -> list[str]:
    """The PACS's own answer (QIDO-RS), not Loupe's: the instances of the study's series of ``modality``."""
    def get(path: str) -> list[dict]:
        response = requests.get(f"{dicomweb_url}{path}", auth=(USER, PASSWORD), timeout=10)
        response.raise_for_status()
        return response.json() if response.content else []

    series = [s["0020000E"]["Value"][0] for s in get(f"/studies/{study_uid}/series?Modality={modality}")]
    return [i["00080018"]["Value"][0] for uid in series for i in get(f"/studies/{study_uid}/series/{uid}/instances")]
