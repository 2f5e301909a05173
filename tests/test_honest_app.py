"""The app on a chest radiograph whose nodule the offline detector misses: what the clinician
reads in the chat and the report panel never reads as a normal study, and the report is signed
only once the reader has written the Impression."""

from __future__ import annotations

from tests.test_app import app, assert_healthy, data_dir, media, open_sections  # noqa: F401 (fixtures)
from tools.detection.performance import shipped_table
from tools.normal_wording import normal_study_phrases

MISSED_RADIOGRAPH = "nih_cxr14/00001075_024.png"


def test_a_missed_radiograph_is_never_read_as_normal_in_the_app(app, eval_dir):  # noqa: F811
    from agent.workspace import open_uploads

    open_uploads(app.session_state["conversation"], [("chest.png", (eval_dir / MISSED_RADIOGRAPH).read_bytes())])
    app.chat_input[0].set_value("Analyse this scan").run()
    assert_healthy(app)
    answer = app.chat_message[-1].markdown[-1].value
    dx = shipped_table().kinds["DX chest"]
    assert "Inconclusive" in answer and "not a normal read" in answer
    assert f"flagged {dx.lesions_flagged} of {dx.lesion_images} lesions" in answer
    assert not normal_study_phrases(answer)

    app.chat_input[0].set_value("Draft a report").run()
    assert_healthy(app)
    page = "\n".join(m.value for m in app.markdown)
    assert "To be completed by the reading physician." in page and "not a normal read" in page
    assert not normal_study_phrases(page)

    open_sections(app, "sign_off_open")
    app.text_input(key="signer_name").set_value("Dr Test").run()
    app.button(key="sign").click().run()
    assert any("write the Impression first" in e.value for e in app.error)
    assert not any("SIGNED" in m.value for m in app.markdown)
    open_sections(app, "edit_report_open")
    app.text_area(key="impression-1").set_value("Right mid-zone nodule, seen by the reader.").run()
    app.button(key="save-1").click().run()
    app.button(key="sign").click().run()
    assert_healthy(app)
    assert any("**Version 3 of 3 · SIGNED by Dr Test**" in m.value for m in app.markdown)
