"""Compare with prior: the sidebar's control — the patient's earlier studies on the PACS when one
is configured (an upload of the prior when it has none, or none is configured) — and, once
compared, the prior beside the current study in the viewer, with the compared findings under them.

The comparison runs as the clinician's action (``agent.comparison.compare``): its tool call, its
figures and its one-line answer join the chat, and the viewer, drawn after the sidebar, shows the
prior in the same run. The priors' rows carry dates for the clinician's eyes: they stay in this
browser session's state and on the screen.
"""

from __future__ import annotations

import streamlit as st

from agent.comparison import (CompareOutcome, PriorView, compare, comparison_key, compared_rows, prior_choices,
                              prior_view)
from agent.conversation import Conversation
from tools.errors import LoupeError
from ui.sections import drawn_when_open

#: The choices and uploads: kept while the section is closed (ui/sections.py).
_KEEP = ("compare_prior_choice",)
_UPLOAD_LABEL = "The prior: DICOM files of one series, a .zip, a PNG or a JPEG"


def compare_panel(conversation: Conversation) -> None:
    """The sidebar's "Compare with prior" (nothing without an open study)."""
    study_id = conversation.ctx.current_study_id
    if study_id is None:
        return
    section = drawn_when_open("Compare with prior", key="compare_prior_open", keep=_KEEP)
    if section is None:
        return
    with section:
        rows = _pacs_priors(conversation, study_id) if conversation.settings.pacs_configured else []
        if rows:
            _pick_from_pacs(conversation, rows)
        else:
            _upload(conversation)
        note = st.session_state.get("compare_note")
        if note and note[0] == study_id:
            (st.success if note[1] else st.error)(note[2])


def _pacs_priors(conversation: Conversation, study_id: str) -> list[dict]:
    """The current study's priors on the PACS, asked once per study while this section is open."""
    state = st.session_state
    listed = state.get("prior_choices")
    if listed is None or listed[0] != study_id:
        try:
            listed = (study_id, prior_choices(conversation.settings, conversation), None)
        except LoupeError as error:
            listed = (study_id, [], error.message)
        state.prior_choices = listed
    _, rows, error = listed
    if error:
        st.warning(error)
    elif not rows:
        st.info("No earlier study of this patient on the PACS; upload the prior instead.")
    return rows


def _pick_from_pacs(conversation: Conversation, rows: list[dict]) -> None:
    by_reference = {row["reference"]: row for row in rows}
    st.caption(f"{len(rows)} earlier stud{'y' if len(rows) == 1 else 'ies'} of this patient on the PACS, "
               "the same kind of study first.")
    reference = st.selectbox("Prior", list(by_reference), format_func=lambda ref: by_reference[ref]["label"],
                             key="compare_prior_choice")
    if st.button("Compare", key="compare_prior_pacs", type="primary",
                 help="Retrieves the prior (or uses its stored copy) and compares the current findings with it"):
        _compare(conversation, reference)


def _upload(conversation: Conversation) -> None:
    uploads = st.file_uploader(_UPLOAD_LABEL, accept_multiple_files=True, key="compare_prior_upload")
    if uploads and st.button("Compare", key="compare_prior_files", type="primary",
                             help="Compares the current findings with the uploaded prior"):
        _compare(conversation, [(u.name, u.getvalue()) for u in uploads])


def _compare(conversation: Conversation, prior) -> None:
    study_id = conversation.ctx.current_study_id
    with st.spinner("Comparing with the prior…"):
        try:
            outcome = compare(conversation, prior)
        except LoupeError as refused:  # an answer being written, another tab's turn
            outcome = CompareOutcome(False, refused.message)
    st.session_state.compare_note = (study_id, outcome.ok, outcome.sentence)


# -- in the viewer ------------------------------------------------------------------------------


def beside_key(study_id: str) -> str:
    return f"prior-beside-{study_id}"


def prior_beside(conversation: Conversation, study_id: str, *, outlines: bool, zoom: str | None) -> PriorView | None:
    """The prior to draw beside the current view, or None (no comparison, or hidden); drawn
    again only when what it shows has changed."""
    state = st.session_state
    compared = comparison_key(conversation)
    if compared is None or not state.get(beside_key(study_id), True):
        return None
    drawn = (conversation.current_view_key(), compared, outlines, zoom)
    cached = state.get(f"prior-image-{study_id}")
    if cached is None or cached[0] != drawn:
        cached = (drawn, prior_view(conversation, outlines=outlines, zoom=zoom))
        state[f"prior-image-{study_id}"] = cached
    return cached[1]


def draw_prior(view: PriorView) -> None:
    """The prior's label, its slice (or why none is shown) and its caption."""
    st.markdown(f"**{view.label}**")
    if view.png is None:
        st.info(view.caption)
        return
    st.image(view.png, width="stretch", output_format="PNG")
    st.caption(view.caption, help="The prior's slice at the current slice's table position, in the current "
                                  "view's window; the compared findings' places in the prior outlined.")


def compared_findings(conversation: Conversation, study_id: str) -> None:
    """The compared findings (id, status, sizes then and now, change) and the side-by-side switch."""
    if comparison_key(conversation) is None:
        return
    rows = compared_rows(conversation)
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.markdown("**Compared with the prior**")
        st.toggle("Prior beside", value=True, key=beside_key(study_id),
                  help="The prior beside the current study, its slice following the current one")
    if rows:
        st.table([{"Finding": row["id"], "Status": row["status"], "Prior": row["prior"], "Current": row["current"],
                   "Change": row["change"]} for row in rows], hide_index=True)
    else:
        st.caption("No finding was compared.")
