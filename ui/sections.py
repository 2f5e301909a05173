"""Expanders whose content is drawn only while they are open.

The browser pays for every element on the page, hidden or not: a table, a highlighted diff, a
text area or a file uploader each load and run their own code, and every element makes each
redraw of the page longer. A reload of a long session would pay for tools nobody opened, so
closed sections send only their label; opening one reruns the app once to draw its content.
"""

from __future__ import annotations

import streamlit as st


def drawn_when_open(label: str, key: str, icon: str | None = None):
    """The expander to draw into while it is open, else None (nothing inside is drawn)."""
    expander = st.expander(label, key=key, icon=icon, on_change="rerun")
    return expander if expander.open else None
