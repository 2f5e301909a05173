"""Loupe's Streamlit app: open a study and view it (the chat arrives with the agent).

Run from the repository root with ``streamlit run ui/app.py`` or ``loupe serve``. This module
only renders: studies are opened and rendered by the ``load_study`` tool through the agent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run ui/app.py` puts ui/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from agent.analysis import analyse_current, finding_json  # noqa: E402
from agent.samples import DEFAULT_SAMPLE, SAMPLES, sample_path  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from agent.toolbox import new_context, run_tool, save_upload  # noqa: E402
from tools.errors import LoupeError  # noqa: E402

st.set_page_config(page_title="Loupe", layout="wide")


@st.cache_resource
def _settings() -> LoupeSettings:
    return LoupeSettings()


def _state():
    state = st.session_state
    if "tool_context" not in state:
        state.tool_context = new_context(_settings())
        state.loaded_from = None
        state.error = None
    return state


def _open(arguments: dict, key: str) -> None:
    state = _state()
    try:
        state.result = run_tool(state.tool_context, "load_study", arguments)
        if state.loaded_from != key:
            state.analysis = None  # a different study: the old findings do not apply
        state.loaded_from, state.error = key, None
    except LoupeError as error:
        state.error = error.message
        state.result = None  # never show the previous study under an error about the new one
        state.loaded_from = key  # do not retry the same failing input on every rerun


def _sidebar() -> None:
    state = _state()
    settings = _settings()
    with st.sidebar:
        st.title("Loupe")
        upload = st.file_uploader("Open a study (DICOM, .zip, PNG, JPEG)", type=None, key="upload")
        sample = st.selectbox("…or a sample study", list(SAMPLES), index=list(SAMPLES).index(DEFAULT_SAMPLE),
                              format_func=lambda name: SAMPLES[name][1])
        if upload is not None:
            key = f"upload:{upload.file_id}"
            if state.loaded_from != key:
                path = save_upload(settings.data_dir / "uploads", upload.name, upload.getvalue())
                _open({"path": str(path)}, key)
        elif state.loaded_from != f"sample:{sample}":
            _open({"path": str(sample_path(sample))}, f"sample:{sample}")
        st.caption(f"Backend: {settings.backend_name}")


def _viewer() -> None:
    state = _state()
    if state.error:
        st.error(state.error)
    result = state.get("result")
    if result is None:
        return
    output = result.output
    summary = output.summary
    controls = st.columns(2)
    frame = output.frame
    if summary.frames > 1:
        frame = controls[0].slider("Frame", 0, summary.frames - 1, output.frame)
    window = "default"
    if output.window_presets:
        window = controls[1].selectbox("Window", ["default", *output.window_presets], key="window")
    wanted = (output.study_id, frame, window)
    if state.get("shown", wanted) != wanted:
        _open({"study_id": output.study_id, "frame": frame, "window": window}, state.loaded_from)
        output = state.result.output
    state.shown = wanted
    image = state.result.artifacts[0]
    left, right = st.columns([3, 1])
    left.image(image.data, caption=image.caption, output_format="PNG")  # lossless, as rendered
    spacing = output.pixel_spacing_mm
    facts = [
        f"**Modality** {summary.modality or 'unknown'}",
        f"**Size** {summary.columns} × {summary.rows} px, {summary.frames} frame(s)",
        f"**Spacing** {spacing[0]:.3g} × {spacing[1]:.3g} mm" if spacing else "**Spacing** unknown (px only)",
        f"**Photometric** {summary.photometric}",
    ]
    right.markdown("  \n".join(facts))


def _analyse() -> None:
    state = _state()
    try:
        detected, artifacts = analyse_current(state.tool_context)
    except LoupeError as error:
        state.error = error.message
        return
    findings = sorted(state.tool_context.study_findings(detected.study_id), key=lambda f: -f.confidence)
    view = state.tool_context.view()
    if view.frame != state.result.output.frame:  # the analysis moved to the strongest finding's slice
        _open({"study_id": detected.study_id, "frame": view.frame}, state.loaded_from)
    state.analysis = {
        "summary": detected.summary,
        "artifacts": [(a.name, a.caption, a.data) for a in artifacts],
        "rows": [_finding_row(finding_json(f)) for f in findings],
    }


def _finding_row(finding: dict) -> dict:
    size = finding["size_mm"]
    x, y = finding["center_px"]
    return {
        "id": finding["id"], "finding": finding["label"], "slice": finding["frame"] + 1,
        "centre (px)": f"{x:.0f}, {y:.0f}",
        "size": f"{size[0]:.1f} × {size[1]:.1f} mm" if size else "px only",
        "confidence": round(finding["confidence"], 2), "status": finding["verification"]["status"],
    }


def _analysis_panel() -> None:
    state = _state()
    if state.get("result") is None:
        return
    st.button("Analyse this study", on_click=_analyse, type="primary")
    analysis = state.get("analysis")
    if not analysis:
        return
    st.markdown(f"**{analysis['summary']}**")
    st.dataframe(analysis["rows"], hide_index=True)
    images = {name: (caption, data) for name, caption, data in analysis["artifacts"]}
    if "overlay-annotated.png" in images:
        caption, data = images.pop("overlay-annotated.png")
        st.image(data, caption=caption, output_format="PNG")
    with st.expander("More views: heatmap, comparison, crops, statistics"):
        for name, (caption, data) in images.items():
            st.image(data, caption=caption or name, output_format="PNG")


_sidebar()
_viewer()
_analysis_panel()
