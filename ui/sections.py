"""Expanders whose content is drawn only while they are open.

The browser pays for every element on the page, hidden or not: a table, a highlighted diff, a
text area or a file uploader each load and run their own code, and every element makes each
redraw of the page longer. A reload of a long session would pay for tools nobody opened, so
closed sections send only their label; opening one reruns the app once to draw its content.

Streamlit forgets the value of a widget that a run does not draw, so a name or an edit typed
into a section would be lost when it is closed. The keys given as ``keep`` are re-assigned
while the section is closed, which turns them into plain session state that outlives the
widget; the widget picks its value up again when the section reopens.
"""

from __future__ import annotations

import streamlit as st


def drawn_when_open(label: str, key: str, icon: str | None = None, keep: tuple[str, ...] = ()):
    """The expander to draw into while it is open, else None (nothing inside is drawn); the
    values of the widgets keyed ``keep`` inside it survive while it is closed."""
    expander = st.expander(label, key=key, icon=icon, on_change="rerun")
    if expander.open:
        return expander
    for widget_key in keep:
        if widget_key in st.session_state:
            st.session_state[widget_key] = st.session_state[widget_key]
    return None
