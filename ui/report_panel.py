"""The report beside the chat: the current version, its status, history with diffs and restore,
direct editing (saved as a version), sign-off, and downloads that do not rerun the app.

The panel shows the latest version after any change: a draft from the chat, an edit, a sign-off,
a restore. An older version is shown only by the clinician's explicit choice, with a banner and
a way back, and that choice lasts only while no new version appears: it is kept with the number
of versions there were when it was made. (The version picker cannot keep the choice itself: a
keyed selectbox keeps its first value once the key has state, whatever ``index`` says, which
left the panel on version 1 of 3.) Sign-off and edits act on the latest version; downloads and
sending to the PACS act on the version shown; every confirmation names its version.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from agent import pacs_studies, reports
from agent.conversation import Conversation
from agent.workspace import answer_in_progress, findings_table
from tools.errors import LoupeError
from ui.sections import drawn_when_open

#: The clinician's choice of an older version: (study id, version, number of versions then).
CHOICE_KEY = "report_version_choice"
PICKER_KEY = "report_version"
#: The last action's confirmation, shown once after the rerun it causes.
NOTICE_KEY = "report_notice"


def findings_panel(conversation: Conversation) -> None:
    """The findings the chat cites by id (F1, F2, …), strongest first."""
    rows = findings_table(conversation)
    if not rows:
        return
    section = drawn_when_open(f"Findings ({len(rows)})", key="findings_open")
    if section is not None:
        with section:
            st.dataframe(rows, hide_index=True, width="stretch")


def report_panel(conversation: Conversation) -> None:
    findings_panel(conversation)
    st.subheader("Report")
    try:
        history = reports.history(conversation)
    except LoupeError:
        st.caption("No report yet. Ask for one in the chat (\"Draft a report\") once the study is analysed.")
        return
    shown = _shown_version(history)
    report, latest = history.version(shown), history.current.version
    badge = f"SIGNED by {report.signed_by}" if report.status == "signed" else "DRAFT"
    st.markdown(f"**Version {report.version} of {len(history.versions)} · {badge}**")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.success(notice)
    answering = answer_in_progress(conversation) is not None
    if shown != latest:
        _older_version(conversation, shown, latest, answering)
    with st.container(border=True):
        st.markdown(_smaller_headings(reports.markdown(report)))
    _compare(conversation, history, shown)
    if answering:  # the answer's copy holds the session; the panel shows it as it was when asked
        st.caption("Sign-off, edits and sending to the PACS wait for the answer being written.")
    elif shown == latest:
        _edit(conversation, report)
        _sign(conversation, report)
    _downloads(conversation, report.version)
    if not answering:
        _send_to_pacs(conversation, report)


def _smaller_headings(markdown: str) -> str:
    """The report's headings two levels down, so the panel reads as a side panel."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


def _shown_version(history) -> int:
    """The latest version, or the older one the clinician chose since the last new version."""
    state = st.session_state
    numbers = [v.version for v in history.versions]
    study_id, count, latest = history.current.study_id, len(numbers), numbers[-1]
    choice = state.get(CHOICE_KEY)
    shown = choice[1] if choice and choice[0] == study_id and choice[2] == count else latest
    if shown == latest:
        state.pop(CHOICE_KEY, None)
    state[PICKER_KEY] = shown  # the picker shows the version shown, whoever chose it last
    st.selectbox("Version", numbers[::-1], key=PICKER_KEY, on_change=_choose, args=(study_id, count, latest),
                 format_func=lambda n: f"{n} — {history.version(n).reason or 'draft'}")
    return shown


def _choose(study_id: str, count: int, latest: int) -> None:
    """The picker's callback: an older version is an explicit choice, the latest is no choice."""
    version = st.session_state[PICKER_KEY]
    if version == latest:
        st.session_state.pop(CHOICE_KEY, None)
    else:
        st.session_state[CHOICE_KEY] = (study_id, version, count)


def _back_to_latest() -> None:
    st.session_state.pop(CHOICE_KEY, None)


def _older_version(conversation: Conversation, shown: int, latest: int, answering: bool) -> None:
    """The banner over an older version: which one, why sign-off and edits are not offered, the
    way back, and restoring it as the latest."""
    st.warning(f"Viewing version {shown} of {latest} — latest is {latest}.", icon=":material/history:")
    st.caption("Sign-off and edits act on the latest version: go back to it, or restore this one.")
    back, restore = st.columns(2)
    back.button(f"Back to the latest (version {latest})", key="report_latest", on_click=_back_to_latest,
                width="stretch")
    if restore.button(f"Restore version {shown}", key="restore", disabled=answering, width="stretch"):
        _act(lambda: reports.restore(conversation, shown, name=_clinician_name()),
             lambda restored: f"Restored version {shown} as version {restored.version}, now the latest.")


def _compare(conversation: Conversation, history, shown: int) -> None:
    others = [v.version for v in history.versions if v.version != shown]
    if not others:
        return
    section = drawn_when_open("Compare with another version", key="compare_open", keep=("compare_with",))
    if section is None:
        return
    with section:
        other = st.selectbox("Compare with", others[::-1], key="compare_with")
        st.code(reports.diff(conversation, min(other, shown), max(other, shown)) or "No differences.", language="diff")


def _edit(conversation: Conversation, report) -> None:
    if report.status == "signed":
        st.caption("This version is signed and cannot change; edits start a new draft.")
    section = drawn_when_open("Edit the report", key="edit_report_open",
                              keep=(f"impression-{report.version}", f"recommendations-{report.version}"))
    if section is None:
        return
    with section:
        impression = st.text_area("Impression", report.impression, key=f"impression-{report.version}")
        recommendations = st.text_area("Recommendations (one per line)", "\n".join(report.recommendations),
                                       key=f"recommendations-{report.version}")
        if st.button("Save as a new version", key=f"save-{report.version}"):
            edits = []
            if impression.strip() != report.impression:
                edits.append({"op": "set_section", "section": "impression", "text": impression})
            if recommendations.strip() != "\n".join(report.recommendations):
                edits.append({"op": "set_section", "section": "recommendations", "text": recommendations})
            if edits:
                _act(lambda: reports.clinician_edit(conversation, edits, name=_clinician_name(),
                                                    reason="edited by the clinician"),
                     lambda saved: f"Saved your edits to version {report.version} as version {saved.version}.")


def _sign(conversation: Conversation, report) -> None:
    if report.status == "signed":
        return
    section = drawn_when_open("Sign off", key="sign_off_open", keep=("signer_name",))
    if section is None:
        return
    with section:
        name = st.text_input("Your name", key="signer_name")
        if st.button(f"Sign version {report.version}", key="sign", disabled=not name.strip()):
            _act(lambda: reports.sign(conversation, report.version, name=name),
                 lambda signed: f"Signed version {signed.version} (the text of version {report.version}).")


def _downloads(conversation: Conversation, version: int) -> None:
    """One download per format of the version shown, named with it; each is made only when
    clicked, and clicking does not rerun."""
    options, notes = reports.export_options(conversation, version)
    columns = st.columns(2)  # two per row: four in the side panel cut their labels to "M…", "P…"
    for index, option in enumerate(options):
        columns[index % 2].download_button(
            f"{option.label} · v{version}", lambda o=option: reports.export_bytes(conversation, o, version),
            file_name=option.file_name, mime=option.mime_type, on_click="ignore",
            key=f"download-{option.kind}-{version}", width="stretch")
    for note in notes:
        st.caption(note)


def _send_to_pacs(conversation: Conversation, report) -> None:
    """Store the SR(s) and the PDF in the source study on the PACS. A draft goes only when the
    clinician ticks that it may; a failure is one sentence and leaves everything local as it was."""
    if not conversation.settings.pacs_configured:
        return
    options, _ = reports.export_options(conversation, report.version)
    if not any(option.kind.startswith("sr") for option in options):
        return  # no source DICOM (a PNG/JPEG): the export notes already say there is no SR
    draft = report.status != "signed"
    allowed = not draft or st.checkbox("Send as draft (marked DRAFT in the SR and PDF)",
                                       key=f"pacs_send_draft-{report.version}")
    sent_key = f"pacs_sent-{conversation.session_id}-{report.study_id}-{report.version}"
    if st.button("Send to PACS", key=f"pacs_send-{report.version}", disabled=not allowed):
        st.session_state.pop(sent_key, None)
        try:
            with st.spinner(f"Sending version {report.version} to the PACS…"):
                stored = pacs_studies.send_report(conversation, report.version, allow_draft=draft)
        except LoupeError as error:
            st.error(error.message)
            return
        st.session_state[sent_key] = [(s.description, s.sop_instance_uid) for s in stored]
    sent = st.session_state.get(sent_key)  # kept so the confirmation outlives the next rerun
    if sent:
        st.success(f"Stored on the PACS: version {report.version} ({report.status}), in the source study:  \n"
                   + "  \n".join(f"{what}: `{uid}`" for what, uid in sent))


def _clinician_name() -> str:
    return st.session_state.get("signer_name") or st.session_state.get("owner") or "clinician"


def _act(action: Callable[[], object], confirmation: Callable[[object], str]) -> None:
    """Run a report action that makes a new version: the panel then shows the latest (the
    choice of an older one ends) and says what became of it."""
    try:
        result = action()
    except LoupeError as error:
        st.error(error.message)
        return
    st.session_state.pop(CHOICE_KEY, None)
    st.session_state[NOTICE_KEY] = confirmation(result)
    st.rerun()
