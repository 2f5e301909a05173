"""The viewer beside the conversation: the current study large, exactly as the tools and the
model see it (the conversation's StudyView: frame and window), with the findings' outlines.

Slice (slider, Prev/Next), window (presets, a free centre/width), outlines, zoom to a finding,
and what the mouse does on the image (``MOUSE_MODES``): the clinician's own marks, a click (a
point) or a drag (a box) becoming a verified finding with source ``clinician``, which the chat
can then name ("what is F6?"); or the caliper, a drag drawing a line with its length (a second
line across it: long × short), which becomes a finding's size, measured by the clinician.

After a comparison with a prior (the sidebar's "Compare with prior": ui/compare_panel.py), the
prior is drawn beside the current view: its slice at the current slice's table position, in the
same window, the compared findings outlined there too; the slice and window controls move both.

Every control acts in a callback, before the script draws anything: one rerun per action, and
the picture drawn is always the view after it. The widgets' values are set from the view on
every run, so a slice or window a tool chose in the chat shows here as it is.

While an answer is written (in the background: ``agent.workspace``), the controls keep working
on this tab's copy of the view and the answer keeps the view it was asked about; the caption says
so when the two differ. Marks and a caliper size wait for the answer: they are added to the
conversation. Caliper lines themselves are only this tab's, on the slice they were drawn on.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from agent.conversation import Conversation
from agent.viewer import (ViewerImage, caliper_finding, caliper_lengths, caliper_line, caliper_text, mark,
                          set_window_level, viewer_image, window_level)
from agent.workspace import (ANSWERING, answer_in_progress, findings_table, set_size_by_caliper, set_view,
                             window_presets)
from tools.errors import LoupeError
from ui.compare_panel import compared_findings, draw_prior, prior_beside
from ui.sections import drawn_when_open

#: Presets in the order radiologists reach for them (CT); any others follow alphabetically.
PRESET_ORDER = ("lung", "soft_tissue", "bone", "brain")
PREVIOUS_KEY, NEXT_KEY = "K", "J"
#: The image is drawn across the column, but no wider than this (a 512² slice at 1.4×).
MAX_WIDTH_PX = 720
DEFAULT_LABEL = "clinician-marked finding"
LABEL_KEY = "viewer-mark-label"
ZOOM_BUTTONS = 12
#: What a click or a drag on the image does.
MOUSE_MODES = {"point": "Point", "box": "Box", "caliper": "Caliper"}
#: A size has a long and a short axis: two caliper lines; a third replaces the second.
CALIPER_LINES = 2


def viewer_panel(conversation: Conversation) -> None:
    """The current study large, its controls, and the clinician's marks."""
    study_id = conversation.ctx.current_study_id
    if study_id is None:
        st.info("No study is open: open one in the sidebar or drop files into the chat.")
        return
    keys = _Keys(study_id)
    state = st.session_state
    view = conversation.ctx.view()
    frames = view.study.frame_count
    presets = _ordered(window_presets(conversation))
    rows = {row["id"]: row for row in findings_table(conversation)}
    if state.get(keys.zoom) not in rows:
        state[keys.zoom] = None
    if state.get(keys.caliper, (view.frame,))[0] != view.frame:  # lines belong to their slice
        state.pop(keys.caliper)
    with st.container(border=True, key="viewer"):
        if frames > 1:
            _slice_controls(conversation, keys, view.frame, frames)
        level = window_level(conversation)
        if level is not None:  # greyscale: presets (CT) and a free window (any)
            _window_controls(conversation, keys, presets, level)
        image = _image(conversation, keys, rows)
        prior = prior_beside(conversation, study_id, outlines=state.get(keys.outlines, True), zoom=state[keys.zoom])
        # The component sizes its frame once, when an image loads: held to the image's proportions,
        # the frame follows the column when the window or the sidebar changes its width. Narrower
        # buttons keep the presets and the window popover, and the mouse modes and the popovers
        # beside them, on one row each at 1280×800.
        st.html(f"<style>.st-key-viewer iframe {{aspect-ratio: {image.width} / {image.height}; "
                "height: auto !important;} .st-key-viewer [data-testid^=stBaseButton] "
                "{padding-left: 0.55rem !important; padding-right: 0.55rem !important;} .st-key-viewer "
                "[data-variant=segmented_control] {padding-left: 0.5rem; padding-right: 0.5rem;}</style>")
        if prior is None:
            _current(conversation, keys, image)
        else:  # the prior beside it, its slice following this one (by table position)
            before, now = st.columns(2, gap="small")
            with before:
                draw_prior(prior)
            with now:
                st.markdown("**Current**")
                _current(conversation, keys, image)
        _answer_view_note(conversation, image)
        error = state.pop("viewer_error", None)
        if error:
            st.error(error)
        windows = ["default", *presets] if level is not None else []
        _findings_controls(conversation, keys, rows, lambda: _shortcuts_help(frames, windows))
        _caliper_panel(conversation, keys, rows)
        _last_mark(keys, rows)
        compared_findings(conversation, study_id)
        _mark_by_coordinates(conversation, keys, image)


def _current(conversation: Conversation, keys: _Keys, image: ViewerImage) -> None:
    """The current view: the image the mouse acts on, and its caption."""
    with st.container(width=MAX_WIDTH_PX):
        streamlit_image_coordinates(_Encoded(image.png), width="stretch", key=keys.click,
                                    click_and_drag=_mode(keys) != "point", cursor="crosshair",
                                    on_click=lambda: _clicked(conversation, keys))
    st.caption(image.caption, help="Exactly the view the tools and the model get: \"this slice\" in the "
                                   "chat is this one.")


def _image(conversation: Conversation, keys: _Keys, rows: dict[str, dict]) -> ViewerImage:
    """The view drawn, or the same picture again when nothing it shows has changed (a rerun for
    the chat or the report redraws nothing here)."""
    state = st.session_state
    outlines, zoom, calipers = state.get(keys.outlines, True), state[keys.zoom], _calipers(keys)
    drawn = (conversation.current_view_key(), outlines, zoom, calipers,
             tuple(tuple(row.values()) for row in rows.values()))
    image = state.get(keys.image)
    if image is None or state.get(keys.drawn) != drawn:
        image = viewer_image(conversation, outlines=outlines, zoom=zoom, calipers=calipers)
        state[keys.image], state[keys.drawn] = image, drawn
    return image


class _Keys:
    """Widget and state keys, distinct per study (each keeps its own slice, window and zoom)."""

    def __init__(self, study_id: str) -> None:
        self.slider = f"frame-{study_id}"
        self.window = f"window-{study_id}"
        self.center, self.width = f"window-center-{study_id}", f"window-width-{study_id}"
        self.synced_window = f"window-synced-{study_id}"
        self.outlines = f"outlines-{study_id}"
        self.zoom = f"zoom-{study_id}"
        self.mode = f"mouse-mode-{study_id}"
        #: (frame, lines): the caliper lines drawn, in native px of that frame, in drawing order.
        self.caliper = f"caliper-{study_id}"
        self.caliper_for, self.caliper_result = f"caliper-finding-{study_id}", f"caliper-result-{study_id}"
        self.click = f"viewer-click-{study_id}"
        self.image, self.drawn = f"viewer-image-{study_id}", f"viewer-drawn-{study_id}"
        self.result = f"mark-result-{study_id}"
        self.mark_x, self.mark_y = f"mark-x-{study_id}", f"mark-y-{study_id}"
        self.study_id = study_id


class _Encoded:
    """The service's PNG as it is: the component takes "an object with a save method" and would
    otherwise decode and re-encode every slice."""

    def __init__(self, png: bytes) -> None:
        self.png = png

    def save(self, buffer, **_) -> None:
        buffer.write(self.png)


# -- controls -------------------------------------------------------------------------------


def _slice_controls(conversation: Conversation, keys: _Keys, frame: int, frames: int) -> None:
    st.session_state[keys.slider] = frame + 1  # the view decides, whoever changed it last
    previous, slider, following = st.columns([1.3, 4, 1.3], vertical_alignment="center")
    previous.button("◀ Prev", key=f"prev-{keys.study_id}", shortcut=PREVIOUS_KEY, disabled=frame == 0,
                    help="Previous slice", width="stretch", on_click=lambda: _step(conversation, -1))
    slider.slider("Slice", 1, frames, key=keys.slider, label_visibility="collapsed",
                  on_change=lambda: _act(lambda: set_view(conversation, frame=st.session_state[keys.slider] - 1)))
    following.button("Next ▶", key=f"next-{keys.study_id}", shortcut=NEXT_KEY, disabled=frame == frames - 1,
                     help="Next slice", width="stretch", on_click=lambda: _step(conversation, +1))


def _window_controls(conversation: Conversation, keys: _Keys, presets: list[str], level: tuple[float, float]) -> None:
    state = st.session_state
    view = conversation.ctx.view()
    name = "default" if view.window is None else view.window.name if view.window.name in presets else None
    state[keys.window] = name
    if state.get(keys.synced_window) != level:  # a new window: show its numbers
        state[keys.center], state[keys.width], state[keys.synced_window] = level[0], level[1], level
    options = ["default", *presets]
    with st.container(horizontal=True, vertical_alignment="center", gap="xsmall"):
        for number, preset in enumerate(options, start=1):
            st.button(_preset_label(preset), key=f"preset-{preset}-{keys.study_id}", shortcut=str(number),
                      type="primary" if preset == name else "secondary", help=f"{_preset_label(preset)} window",
                      on_click=lambda preset=preset: _act(lambda: set_view(conversation, window=preset)))
        with st.popover("W/L", icon=":material/tune:", key=f"free-window-{keys.study_id}",
                        help="A preset by name, or a free window: centre and width in the study's units (HU for CT)"):
            st.selectbox("Window", options, key=keys.window, index=None, placeholder="free window",
                         format_func=_preset_label,
                         on_change=lambda: _act(lambda: set_view(conversation, window=state[keys.window] or "default")))
            with st.form(f"free-window-form-{keys.study_id}", border=False):
                st.number_input("Window centre", key=keys.center, step=10.0, format="%g")
                st.number_input("Window width", key=keys.width, min_value=1.0, step=10.0, format="%g")
                st.form_submit_button("Apply", key=f"apply-window-{keys.study_id}", on_click=lambda: _act(
                    lambda: set_window_level(conversation, state[keys.center], state[keys.width])))


def _findings_controls(conversation: Conversation, keys: _Keys, rows: dict[str, dict],
                       shortcuts_help: Callable[[], None]) -> None:
    state = st.session_state
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.toggle("Outlines", value=True, key=keys.outlines)
        st.segmented_control("On the image", list(MOUSE_MODES), format_func=MOUSE_MODES.get, key=keys.mode,
                             default="point", required=True, label_visibility="collapsed",
                             help="What the mouse does on the image. Point: a click marks a point. Box: drag a box "
                                  "around what you mean. Caliper: drag a line to measure it, then a second one "
                                  "across it (long × short axis), and set it as a finding's size.")
        label = (state.get(LABEL_KEY) or "").strip()
        popover = st.popover(f"Label: {label}"[:32] if label else "Label", icon=":material/label:",
                             key="viewer-label-open", on_change="rerun",
                             help=f"What your next marks are called (now “{label or DEFAULT_LABEL}”)")
        with popover:
            if popover.open:
                st.text_input("Label for your next marks", key=LABEL_KEY, placeholder=DEFAULT_LABEL)
            elif LABEL_KEY in state:
                state[LABEL_KEY] = state[LABEL_KEY]  # kept while the popover is closed
        shortcuts_help()
    if not rows:
        return
    with st.container(horizontal=True, gap="xsmall"):
        if state[keys.zoom] is not None:
            st.button("Whole image", key=f"whole-{keys.study_id}", type="primary",
                      on_click=lambda: state.__setitem__(keys.zoom, None))
        for finding_id, row in list(rows.items())[:ZOOM_BUTTONS]:
            st.button(f"Zoom to {finding_id}", key=f"zoom-{finding_id}-{keys.study_id}",
                      help=f"{row['finding']} · slice {row['slice']} · {row['source']}",
                      on_click=lambda finding_id=finding_id, frame=row["slice"] - 1: _zoom(conversation, keys,
                                                                                            finding_id, frame))


def _shortcuts_help(frames: int, windows: list[str]) -> None:
    with st.popover("Keys", icon=":material/keyboard:", help="Keyboard shortcuts of the viewer"):
        lines = ["| Key | Does |", "|---|---|"]
        if frames > 1:
            lines += [f"| {NEXT_KEY} | next slice |", f"| {PREVIOUS_KEY} | previous slice |"]
        lines += [f"| {number} | {_preset_label(window).lower()} window"
                  f"{' (the study’s own)' if window == 'default' else ''} |"
                  for number, window in enumerate(windows, start=1)]
        st.markdown("\n".join(lines))
        st.caption("Shortcuts work while no text field has the focus. A click on the image marks a point; "
                   "with “Box”, a drag marks a box; with “Caliper”, a drag measures a line.")


def _mark_by_coordinates(conversation: Conversation, keys: _Keys, image: ViewerImage) -> None:
    section = drawn_when_open("Mark by coordinates", key=f"mark-coordinates-open-{keys.study_id}",
                              keep=(keys.mark_x, keys.mark_y))
    if section is None:
        return
    with section:
        st.caption(f"Native pixels of frame {image.frame + 1} (x to the right, y down, from the top-left pixel's "
                   "centre); it is marked as a click there.")
        left, right = st.columns(2)
        left.number_input("x (px)", key=keys.mark_x, min_value=0.0, value=None, step=1.0, format="%g")
        right.number_input("y (px)", key=keys.mark_y, min_value=0.0, value=None, step=1.0, format="%g")
        st.button("Mark this point", key=f"mark-point-{keys.study_id}",
                  on_click=lambda: _mark_native(conversation, keys))


def _answer_view_note(conversation: Conversation, image: ViewerImage) -> None:
    """While an answer is written on another view than this one, which view that is."""
    live = answer_in_progress(conversation)
    if live is None or live.turn_view is None:
        return
    study_id, frame, window = live.turn_view
    view = conversation.ctx.view()
    if (study_id, frame, window) == (conversation.ctx.current_study_id, view.frame, view.window):
        return
    shown = f", window {window.center:g}/{window.width:g}" if window else " in the study’s own window"
    where = f"frame {frame + 1} of {image.frames}{shown}" if study_id == view.study.id else "another study"
    st.caption(f"The answer being written works on {where}; the view you choose here becomes the one the "
               "tools and the model get once it is finished.")


def _last_mark(keys: _Keys, rows: dict[str, dict]) -> None:
    result = st.session_state.get(keys.result)
    if not result:
        return
    finding_id, sentence = result
    status = rows.get(finding_id, {}).get("verification") if finding_id else None
    if status == "confirmed":
        st.success(sentence, icon=":material/check:")
    elif finding_id is None or status == "rejected":
        st.warning(sentence)
    else:
        st.info(sentence)


# -- actions (callbacks: they run before the script draws) -------------------------------------


def _act(action: Callable[[], str | None]) -> None:
    """Run a view change; its error sentence (or a refusal: another tab's turn) is shown once."""
    try:
        error = action()
    except LoupeError as refused:
        error = refused.message
    if error:
        st.session_state.viewer_error = error


def _step(conversation: Conversation, delta: int) -> None:
    """One slice on from the view as it is now (a key held down must not replay a stale frame)."""
    view = conversation.ctx.view()
    frame = min(max(0, view.frame + delta), view.study.frame_count - 1)
    if frame != view.frame:
        _act(lambda: set_view(conversation, frame=frame))


def _zoom(conversation: Conversation, keys: _Keys, finding_id: str, frame: int) -> None:
    st.session_state[keys.zoom] = finding_id
    if conversation.ctx.view().frame != frame:
        _act(lambda: set_view(conversation, frame=frame))


def _clicked(conversation: Conversation, keys: _Keys) -> None:
    """A click or a drag on the image: in displayed pixels, scaled to the PNG's."""
    value = st.session_state.get(keys.click)
    image: ViewerImage | None = st.session_state.get(keys.image)
    if not value or image is None or not value.get("width") or not value.get("height"):
        return
    sx, sy = image.width / value["width"], image.height / value["height"]
    if "x1" in value:
        drag = (value["x1"] * sx, value["y1"] * sy, value["x2"] * sx, value["y2"] * sy)
        if _mode(keys) == "caliper":
            _caliper_drawn(conversation, keys, image, drag)
        else:
            _mark(conversation, keys, image, box=drag)
    else:
        _mark(conversation, keys, image, point=(value["x"] * sx, value["y"] * sy))


def _mark_native(conversation: Conversation, keys: _Keys) -> None:
    """The coordinates typed in native pixels: PNG = (native + 0.5 - origin) × scale."""
    state = st.session_state
    image: ViewerImage | None = state.get(keys.image)
    x, y = state.get(keys.mark_x), state.get(keys.mark_y)
    if image is None:
        return
    if x is None or y is None:
        state[keys.result] = (None, "Give both x and y to mark a point.")
        return
    point = ((x + 0.5 - image.origin[0]) * image.scale, (y + 0.5 - image.origin[1]) * image.scale)
    _mark(conversation, keys, image, point=point)


def _mark(conversation: Conversation, keys: _Keys, image: ViewerImage, **where) -> None:
    if answer_in_progress(conversation) is not None:  # a mark is told to the model: not mid-answer
        st.session_state[keys.result] = (None, ANSWERING)
        return
    label = (st.session_state.get(LABEL_KEY) or "").strip() or DEFAULT_LABEL
    try:
        st.session_state[keys.result] = mark(conversation, image, label=label, **where)
    except LoupeError as refused:  # another tab's turn holds the session
        st.session_state[keys.result] = (None, refused.message)


# -- the caliper ----------------------------------------------------------------------------------


def _mode(keys: _Keys) -> str:
    return st.session_state.get(keys.mode) or "point"


def _calipers(keys: _Keys) -> tuple:
    """The caliper lines drawn on the shown slice (the panel drops those of another slice)."""
    return st.session_state.get(keys.caliper, (None, ()))[1]


def _caliper_panel(conversation: Conversation, keys: _Keys, rows: dict[str, dict]) -> None:
    """The caliper's length(s), the finding to give them to, Set and Clear, and what came of it."""
    state = st.session_state
    lines, result = _calipers(keys), state.get(keys.caliper_result)
    if _mode(keys) != "caliper" and not lines and not result:
        return
    if result:
        ok, sentence = result
        if ok:
            st.success(sentence, icon=":material/straighten:")
        else:
            st.warning(sentence)
    if not lines:
        st.caption("Caliper: drag along the lesion's long axis, then across it for the short axis.")
        return
    frame = state[keys.caliper][0]
    lengths, unit = caliper_lengths(conversation, frame, lines)
    st.caption(f"Caliper: {caliper_text(lengths, unit)}" + (" (long × short)" if len(lines) == CALIPER_LINES else ""))
    choices = [finding_id for finding_id, row in rows.items() if row["slice"] == frame + 1]
    if state.get(keys.caliper_for) not in choices:
        state[keys.caliper_for] = caliper_finding(conversation, frame, lines[0])
    with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        st.selectbox("Finding", choices, key=keys.caliper_for, width=110, placeholder="none on this slice",
                     help="The finding these lines measure: by default the one under the first line, else the "
                          "nearest on this slice.")
        finding_id = state.get(keys.caliper_for)
        st.button(f"Set as {finding_id}'s size" if finding_id else "Set as a finding's size",
                  key=f"caliper-set-{keys.study_id}", type="primary",
                  disabled=len(lines) < CALIPER_LINES or not finding_id,
                  on_click=lambda: _apply_caliper(conversation, keys))
        st.button("Clear", key=f"caliper-clear-{keys.study_id}", icon=":material/close:",
                  on_click=lambda: _clear_caliper(keys))
    if len(lines) < CALIPER_LINES:
        st.caption("A size has a long and a short axis: draw the short axis across it too.")
    elif not choices:
        st.caption("No finding on this slice to give the size to: mark the lesion first (Point or Box).")


def _caliper_drawn(conversation: Conversation, keys: _Keys, image: ViewerImage,
                   drag: tuple[float, float, float, float]) -> None:
    """A caliper drag: the first line, the second across it, or a new second one."""
    state = st.session_state
    line = caliper_line(conversation, image, drag)
    if line is None:  # a click: nothing to measure
        return
    lines = _calipers(keys)[:CALIPER_LINES - 1] if state.get(keys.caliper, (None,))[0] == image.frame else ()
    state[keys.caliper] = (image.frame, (*lines, line))
    state.pop(keys.caliper_result, None)
    if not lines:  # a new measurement: the finding under it, unless the clinician picks another
        state[keys.caliper_for] = caliper_finding(conversation, image.frame, line)


def _apply_caliper(conversation: Conversation, keys: _Keys) -> None:
    """The two lines become the chosen finding's size; kept when refused, to try again."""
    state = st.session_state
    lines = _calipers(keys)
    if len(lines) < CALIPER_LINES or not state.get(keys.caliper_for):
        return
    try:
        state[keys.caliper_result] = (True, set_size_by_caliper(conversation, state[keys.caliper_for], *lines))
    except LoupeError as refused:  # an answer being written, or another tab's turn, holds the session
        state[keys.caliper_result] = (False, refused.message)
        return
    state.pop(keys.caliper, None)


def _clear_caliper(keys: _Keys) -> None:
    st.session_state.pop(keys.caliper, None)
    st.session_state.pop(keys.caliper_result, None)


def _ordered(presets: list[str]) -> list[str]:
    return [p for p in PRESET_ORDER if p in presets] + sorted(p for p in presets if p not in PRESET_ORDER)


def _preset_label(preset: str) -> str:
    return "Default" if preset == "default" else preset.replace("_", " ").capitalize()
