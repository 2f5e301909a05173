"""What the app does to compare the current study with a prior: list the patient's earlier
studies on the PACS, run ``compare_with_prior`` as the clinician's action, and show the prior
beside the current study.

The comparison is one turn of the conversation without a model (``ClinicianCompare``, as the
pre-read's turn is): the tool call and its figures show in the chat like any other, the answer is
the tool's one-line summary, and the model is told it in the history, so "has F1 grown?" can be
asked next. Nothing in what the model is told carries the prior's date (only the interval in
days); the date is for the clinician's screen (``PriorView.label``).

The side-by-side view (``prior_view``) follows the current view: the prior's slice at the current
slice's table position (``tools.compare.slices``; frame 0 of a single image), drawn in the
current view's window, the comparison's places of the findings outlined on it in the viewer's
scheme (``agent.viewer``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.conversation import Conversation, Turn
from agent.events import AssistantText, Event, ToolFinished, ToolStarted
from agent.pacs.client import PacsConnection, PacsNotFoundError
from agent.pacs.priors import priors_of
from agent.settings import LoupeSettings
from agent.tool_calls import ToolOutcome, execute
from agent.viewer import Outline, circle_outline, draw_outlines, png_bytes, shown_region
from agent.workspace import stored_uploads, refuse_while_answering
from tools.compare.record import ComparedFinding, LesionThere, PriorComparison
from tools.compare.slices import matching_slice
from tools.errors import LoupeError
from tools.render.style import STATUS_LINES, outline_rgb
from tools.study import Study, iso_date

TOOL = "compare_with_prior"
PACS_PREFIX = "pacs:"
#: A prior place drawn without a measured size: this radius, in the prior's native pixels.
UNMEASURED_RADIUS_PX = 8.0

#: A prior given as uploaded files: (name, bytes) each.
Uploads = list[tuple[str, bytes]]


# -- the priors on the PACS ---------------------------------------------------------------------


def prior_choices(settings: LoupeSettings, conversation: Conversation) -> list[dict[str, Any]]:
    """The current study's patient's earlier studies on the PACS, the likeliest prior first, as
    rows for a picker (``reference`` to compare with, ``label`` to show: date, modality,
    description, interval); [] without a PACS or an open study. For the clinician's screen only:
    the rows carry dates. A ``LoupeError`` in one sentence when they cannot be listed (a study
    without a Study Instance UID, one the PACS does not hold, a PACS error)."""
    if not settings.pacs_configured or conversation.ctx.current_study_id is None:
        return []
    study_uid = conversation.ctx.view().study.identifying.study_instance_uid
    if not study_uid:
        raise LoupeError("The current study is no DICOM study (it has no Study Instance UID), so its patient's "
                         "earlier studies cannot be found on the PACS; upload the prior instead.")
    try:
        priors = priors_of(PacsConnection(settings), study_uid)
    except PacsNotFoundError as error:
        raise PacsNotFoundError("The current study is not on the PACS, so its patient's earlier studies cannot be "
                                "listed there; upload the prior instead.") from error
    rows = []
    for prior in priors:
        row = prior.as_json()
        days = row["interval_days"]
        parts = [iso_date(row["study_date"]) or row["study_date"], ", ".join(row["modalities"]),
                 row["description"] or "(no description)",
                 f"{days} day{'' if days == 1 else 's'} earlier"]
        rows.append({**row, "reference": f"{PACS_PREFIX}{row['study_uid']}",
                     "label": " · ".join(part for part in parts if part)})
    return rows


# -- comparing: the clinician's action ----------------------------------------------------------


@dataclass(frozen=True)
class CompareOutcome:
    """What came of a comparison: its one-line summary (and what the clinician should know), or
    the one sentence saying why it could not be made; the figures, (caption, PNG) each."""

    ok: bool
    sentence: str
    figures: list[tuple[str, bytes]] = field(default_factory=list)


def compare(conversation: Conversation, prior: str | Path | Uploads,
            finding_ids: Sequence[str] | None = None) -> CompareOutcome:
    """Compare the current study with ``prior`` — a ``pacs:STUDY_UID`` reference, a local file or
    folder, or uploaded files (kept under the data folder as ``workspace.open_uploads`` keeps
    them) — as the clinician's action: a turn of the conversation without a model, recorded and
    committed with the session (the prior's copy too). Refused in one sentence (a ``LoupeError``)
    while an answer is written or another tab's turn holds the session; a comparison that cannot
    be made (another region, no current study, a PACS error) is an outcome with its sentence."""
    refuse_while_answering(conversation)
    if isinstance(prior, list):
        if not prior:
            raise LoupeError("Choose the prior's files first.")
        reference, said = str(stored_uploads(conversation.settings, prior)), "the uploaded prior"
    else:
        reference = str(prior).strip()
        said = "the prior from the PACS" if reference.startswith(PACS_PREFIX) else "the prior"
    if not reference.startswith(PACS_PREFIX):
        path = Path(reference)
        if not path.exists():
            raise LoupeError(f"There is no file or folder {reference} to compare with.")
        conversation.allow_beside(path)  # the clinician may compare with any file (the model only near it)
    args: dict[str, Any] = {"prior": reference}
    if finding_ids:
        args["finding_ids"] = list(finding_ids)
    backend = ClinicianCompare(args)
    for _ in conversation.ask(f"Compare this study with {said}.", backend):
        pass  # recorded by the conversation as they come; the outcome is kept by the backend
    outcome = backend.outcome
    if outcome is None:  # the turn stopped before the tool ran (an internal error, logged)
        return CompareOutcome(False, "The comparison stopped unexpectedly; nothing was compared.")
    if conversation.recorder is not None and outcome.ok:
        conversation.recorder.audit("prior_compared", {"prior_study_id": outcome.output["prior_study_id"],
                                                       "findings": len(outcome.output["findings"]),
                                                       "by": "clinician"})
    figures = [(a.caption, a.data) for a in outcome.artifacts if a.mime_type == "image/png"]
    return CompareOutcome(outcome.ok, backend.answer, figures)


class ClinicianCompare:
    """The clinician's comparison as a turn: the tool call, recorded as a model's would be, then
    its summary as the answer (told to the model in the history)."""

    name = "clinician"

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.outcome: ToolOutcome | None = None
        self.answer = ""

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        yield from self._run(conversation, turn)
        conversation.note_exchange(turn.message, self.answer)
        yield AssistantText(text=self.answer)

    def _run(self, conversation: Conversation, turn: Turn) -> Generator[Event, None, None]:
        call_id = f"clinician-{turn.id}-1"
        yield ToolStarted(call_id=call_id, name=TOOL, args=self.args)
        self.outcome = outcome = execute(conversation.ctx, TOOL, self.args)
        event = outcome.event(call_id)
        if isinstance(event, ToolFinished):  # its own one line, not the generic first fields
            event = event.model_copy(update={"summary": outcome.output["summary"]})
        yield event
        if outcome.ok:
            self.answer = " ".join(part for part in (outcome.output["summary"], outcome.output["message"]) if part)
        else:
            self.answer = f"The comparison with the prior could not be made: {outcome.error}"


# -- the prior beside the current study ---------------------------------------------------------


def comparison_of(conversation: Conversation) -> PriorComparison | None:
    """The current study's latest comparison whose prior is open in the session, if any."""
    ctx = conversation.ctx
    study_id = ctx.current_study_id
    kept = ctx.comparisons.get(study_id) if study_id else None
    if kept is None or kept.output.prior_study_id not in ctx.views:
        return None
    return kept


@dataclass(frozen=True)
class PriorView:
    """The prior as the viewer shows it beside the current view."""

    #: "Prior (2023-12-03)": for the clinician's screen only.
    label: str
    #: The prior's slice at the current slice's table position (None: it does not reach it).
    frame: int | None
    frames: int
    png: bytes | None
    width: int
    height: int
    #: e.g. "prior frame 6 of 10 · slice position -123.5 mm · window 40/350"; or why it is not shown.
    caption: str
    #: Where the prior slice lies, and the current one, along the series' normal (mm; None unsaid).
    position_mm: float | None = None
    current_position_mm: float | None = None


def prior_view(conversation: Conversation, *, outlines: bool = True, zoom: str | None = None) -> PriorView | None:
    """The current comparison's prior at the current view's slice and window (None without a
    comparison): the findings' places in the prior outlined (``outlines``), zoomed to the prior
    place of finding ``zoom`` when it is on that slice."""
    kept = comparison_of(conversation)
    if kept is None:
        return None
    ctx = conversation.ctx
    view = ctx.view()
    current, prior = view.study, ctx.views[kept.output.prior_study_id].study
    label = f"Prior ({kept.prior_date})" if kept.prior_date else "Prior"
    here = _position(current, view.frame, current, view.frame)
    if current.frame_count > 1 and prior.frame_count > 1:
        try:
            frame = matching_slice(current, view.frame, prior).prior_frame
        except LoupeError as error:  # the prior does not reach this slice, or cannot say where its slices lie
            return PriorView(label, None, prior.frame_count, None, 0, 0, error.message, current_position_mm=here)
    else:
        frame = min(view.frame, prior.frame_count - 1)
    # One window for both: the current view's, as it resolved on the current slice (its own
    # default included); the prior's own display only where the current has no centre/width.
    window = current.render(view.frame, view.window).window
    rendered = prior.render(frame, window)
    places = _places(conversation, kept, prior, frame)
    zoomed = next(((centre, 2 * radius) for name, centre, radius, _ in places if name == zoom), None)
    image, origin, scale = shown_region(rendered.pixels, zoomed)
    if outlines:
        draw_outlines(image, [outline for *_, outline in places], origin, scale)
    position = _position(prior, frame, current, view.frame)
    parts = [f"prior frame {frame + 1} of {prior.frame_count}"]
    if position is not None:
        parts.append(f"slice position {position:.1f} mm")
    if rendered.window is not None:
        parts.append(f"window {rendered.window.center:g}/{rendered.window.width:g}")
    if zoomed is not None:
        parts.append(f"zoomed to {zoom}")
    return PriorView(label, frame, prior.frame_count, png_bytes(image), image.width, image.height,
                     " · ".join(parts), position, here)


def _position(study: Study, frame: int, along: Study, along_frame: int) -> float | None:
    """Where ``study``'s slice ``frame`` lies along the normal of ``along``'s slice (mm): the
    current series' table axis, so that the two positions compare even when the prior's slices
    were stored with the normal the other way; None when a header does not say."""
    try:
        geometry, axis = study.geometry(frame), along.geometry(along_frame)
    except (AttributeError, ValueError, TypeError):
        return None
    if geometry.position_mm is None or axis.orientation is None:
        return None
    normal = np.cross(np.array(axis.orientation[:3]), np.array(axis.orientation[3:]))
    return float(np.dot(normal, np.array(geometry.position_mm)))


def _places(conversation: Conversation, kept: PriorComparison, prior: Study, frame: int
            ) -> list[tuple[str, tuple[float, float], float, Outline]]:
    """(id, centre, radius, outline) in the prior's native pixels of each compared finding found
    on the prior's ``frame``: a circle of its measured mean diameter, in the colour of the current
    finding's source (a prior candidate gone now: the detector's), dashed or dotted as its check
    in the prior says."""
    scale = float(kept.output.registration.transform.get("scale", 1.0))  # type: ignore[arg-type]
    spacing = prior.pixel_spacing_mm(frame)
    found = []
    for item in kept.output.findings:
        there = item.prior
        if there is None or there.frame != frame:
            continue
        radius = _radius(there, spacing, scale)
        finding = conversation.ctx.findings.get(item.id)
        colour = outline_rgb(finding.source if finding is not None else "classical")
        line = STATUS_LINES.get(item.verification or "confirmed", "solid")
        found.append((item.id, there.center_px, radius, circle_outline(item.id, there.center_px, radius, colour, line)))
    return found


def _radius(there: LesionThere, spacing_mm: tuple[float, float] | None, scale: float) -> float:
    """Half the mean diameter in the prior's native pixels (a size in px is in the current
    image's pixels: times the registration's scale)."""
    if there.size_mm is not None and spacing_mm:
        return sum(there.size_mm) / 2 / 2 / (sum(spacing_mm) / 2)
    if there.size_px is not None:
        return sum(there.size_px) / 2 / 2 * scale
    return UNMEASURED_RADIUS_PX


# -- the compared findings, as a table ----------------------------------------------------------


def compared_rows(conversation: Conversation) -> list[dict[str, Any]]:
    """The current comparison's findings as rows: id, status, prior size, current size, change."""
    kept = comparison_of(conversation)
    if kept is None:
        return []
    return [{"id": item.id, "status": item.status, "prior": _size(item.prior), "current": _size(item.current),
             "change": _change(item)} for item in kept.output.findings]


def _size(there: LesionThere | None) -> str:
    return "—" if there is None else there.size_text()


def _change(item: ComparedFinding) -> str:
    change = item.change
    if change is None:
        return {"new": "new", "resolved": "gone"}.get(item.status, "—")
    pct = f"{round(change.mean_diameter_pct) + 0.0:+.0f} %"  # + 0.0: no "-0"
    if change.mean_diameter_mm is None:
        text = f"{pct} mean diameter"
    else:
        text = f"{round(change.mean_diameter_mm, 1) + 0.0:+.1f} mm mean diameter ({pct})"
    if change.doubling_time_days is not None:
        text += f", doubling time {change.doubling_time_days:.0f} days"
    return text


def comparison_summary(conversation: Conversation) -> str | None:
    """The current comparison's one line (what changed, over how many days), if any."""
    kept = comparison_of(conversation)
    return None if kept is None else kept.output.summary


def comparison_key(conversation: Conversation) -> tuple | None:
    """What identifies the current comparison as drawn (a new one, or another prior, differs)."""
    kept = comparison_of(conversation)
    if kept is None:
        return None
    output = kept.output
    return output.prior_study_id, output.summary, tuple((f.id, f.prior) for f in output.findings)
