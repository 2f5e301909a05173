"""What every tool receives: the open studies, the clinician's current view, limits.

Tools never reach for module-level state; the agent owns one ``ToolContext`` per session and
passes it as the first argument. A ``StudyView`` is what the clinician is looking at: a study,
a frame and a window.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tools.checklists.record import SecondReadState
from tools.compare.record import PriorComparison
from tools.detection.detector import Detector, SliceSearch
from tools.detection.performance import PerformanceTable, shipped_table
from tools.errors import NoStudyOpenError, UnreadableStudyError
from tools.findings import Finding
from tools.render.model_image import ImagePolicy
from tools.report.document import ClinicalReport, ReportHistory, ReportNarrative
from tools.study import Study, StudyLimits, Window


class Artifact(BaseModel):
    """An image (or other file) a tool produced for the clinician and possibly the model."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Short file-like name, e.g. 'display-frame0.png'.")
    mime_type: str = "image/png"
    data: bytes = Field(repr=False)
    caption: str = ""
    for_model: bool = Field(default=False, description="Send to the vision model as well.")


class VisionProposal(BaseModel):
    """One location a vision model proposes, in its own convention (see tools.coordinates)."""

    model_config = ConfigDict(frozen=True)

    box_2d: list[float] = Field(min_length=4, max_length=4, description="[ymin, xmin, ymax, xmax], 0–1000.")
    label: str = ""
    sample: int = Field(default=0, ge=0, description="Which of several repeated samples proposed it.")


class VisionProposer(Protocol):
    """A vision model that proposes anomaly locations on an image (Gemini, or a test double).

    ``image_png`` is exactly the image the model sees; the boxes it returns are relative to it.
    """

    name: str

    def propose(self, image_png: bytes, *, modality: str | None, samples: int) -> list[VisionProposal]: ...


class ReportWriter(Protocol):
    """A language model that words a report (Gemini, or a test double).

    ``write`` gets the report as the tools built it and an instruction ("draft", or a style such
    as "concise"), and returns new prose for the narrative fields only.
    """

    name: str

    def write(self, report: ClinicalReport, instruction: str) -> ReportNarrative: ...


@dataclass
class ToolResult:
    """A tool's typed output plus the artifacts it rendered."""

    output: BaseModel
    artifacts: list[Artifact] = field(default_factory=list)


@dataclass
class StudyView:
    """One open study and how the clinician is viewing it."""

    study: Study
    frame: int = 0
    window: Window | None = None


T = TypeVar("T")


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"

_DERIVED_ENTRIES = 4


@dataclass
class ToolContext:
    """Per-session state shared by the tools.

    ``allowed_roots``, when set, confines ``load_study`` paths to those folders: a model must
    not be able to open arbitrary files on the server.
    """

    limits: StudyLimits = field(default_factory=StudyLimits)
    allowed_roots: tuple[Path, ...] | None = None
    views: dict[str, StudyView] = field(default_factory=dict)
    current_study_id: str | None = None
    vision: VisionProposer | None = None
    #: A trained detector (``LOUPE_DETECTOR_MODEL``) whose boxes are verified like any proposal;
    #: None: the classical detector alone.
    detector: Detector | None = None
    #: How a whole series' slices are searched; None: here, one after another. A pre-read job
    #: shares a long series out in chunks to its workers (``agent.preread.chunks``).
    slice_search: SliceSearch | None = None
    #: The classical detector's measured performance per kind of image: the shipped table, or
    #: one a site measured on its own images (``LOUPE_PERFORMANCE_TABLE``).
    performance: PerformanceTable = field(default_factory=shipped_table)
    #: Applied to every image prepared for a vision model; None = no restriction (no model).
    image_policy: ImagePolicy | None = None
    report_writer: ReportWriter | None = None
    #: Every version of each study's report, by study id.
    reports: dict[str, ReportHistory] = field(default_factory=dict)
    model_image_max_side: int = 1024
    findings: dict[str, Finding] = field(default_factory=dict)
    #: Centres (x, y) of the vision model's repeated samples behind a finding, by finding id.
    finding_samples: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    #: Guided second reads (tools.second_read), by study id; JSON via ``SecondReadState.model_dump``.
    second_reads: dict[str, SecondReadState] = field(default_factory=dict)
    #: How many finding ids (F1, F2, ...) this session has issued; stored with the session so
    #: that a reopened session never reuses one.
    findings_issued: int = 0
    #: Ids of automatic findings a later search did not find again, with the study they were on:
    #: a question naming one is told where it was, never answered with another finding.
    retired_findings: dict[str, str] = field(default_factory=dict)
    #: Comparisons with a prior (``compare_with_prior``), by the current study's id: the newest one.
    comparisons: dict[str, PriorComparison] = field(default_factory=dict)
    #: Resolves a ``pacs:STUDY_UID[/SERIES_UID]`` reference to the local folder it was retrieved
    #: into; None: no PACS is configured (set by the agent, which owns the PACS client).
    resolve_reference: Callable[[str], Path] | None = None
    #: Told of every study opened, with the file or folder it came from (None: a list of files):
    #: the conversation watches its identifying values and keeps a copy with the session.
    on_study_added: Callable[[Study, Path | None], None] | None = None
    #: Figures' theme: the app sets it from the page's theme before each turn; exports (the PDF) force light.
    figure_theme: Literal["light", "dark"] = "light"
    _derived: OrderedDict[tuple, object] = field(default_factory=OrderedDict, repr=False)

    def derived(self, key: tuple, compute: Callable[[], T]) -> T:
        """Per-session cache of expensive derived data (e.g. a frame's detection working
        image), so that detect, verify and fit on the same frame compute it once."""
        if key in self._derived:
            self._derived.move_to_end(key)
            return self._derived[key]  # type: ignore[return-value]
        value = compute()
        self._derived[key] = value
        while len(self._derived) > _DERIVED_ENTRIES:
            self._derived.popitem(last=False)
        return value

    def forget_derived(self, study_id: str) -> None:
        """Drop what was derived from a study (after its modality changed, say)."""
        for key in [key for key in self._derived if study_id in key]:
            del self._derived[key]

    def next_finding_id(self) -> str:
        """F1, F2, ... never reused within a session, even after findings are replaced."""
        self.findings_issued += 1
        return f"F{self.findings_issued}"

    def study_findings(self, study_id: str) -> list[Finding]:
        return [f for f in self.findings.values() if f.study_id == study_id]

    def study_label(self, study_id: str) -> str:
        """The study in words a clinician recognises, from allow-listed facts only (modality, size,
        slices, when it was opened in the session): never a name, date, description or UID,
        because this sentence may reach a model."""
        view = self.views.get(study_id)
        if view is None:
            return "a study that is no longer open in this session"
        safe = view.study.safe
        modality = safe.modality or "image"
        frames = view.study.frame_count
        shape = (f"series of {frames} slices" if frames > 1 and safe.modality in ("CT", "MR") else
                 f"{frames}-frame study" if frames > 1 else "image")
        order = list(self.views).index(study_id) + 1
        current = " (the one open now)" if study_id == self.current_study_id else ""
        return f"the {modality} {shape} ({safe.columns}×{safe.rows} px) opened {_ordinal(order)} in this session{current}"

    def finding_not_here(self, finding_id: str, study_id: str | None = None) -> str | None:
        """Why ``finding_id`` cannot be answered on ``study_id`` (default the current study), in
        one sentence naming the study it was on; None when it is a finding of that study."""
        key = study_id or self.current_study_id
        finding = self.findings.get(finding_id)
        if finding is not None and finding.study_id == key:
            return None
        if finding is not None:
            return (f"{finding_id} is not a finding of this study: it is on {self.study_label(finding.study_id)}; "
                    "open that study to ask about it.")
        if finding_id in self.retired_findings:
            where = self.retired_findings[finding_id]
            here = "this study" if where == key else self.study_label(where)
            return (f"{finding_id} is no longer a finding: it was on {here}, and a later search did not find it "
                    "again there; its id is not given to another finding.")
        highest = max([self.findings_issued, *(int(f[1:]) for f in self.findings)])
        if not highest:
            return f"There is no finding {finding_id}: no finding has been made in this session yet."
        return f"There is no finding {finding_id} in this session; its ids run from F1 to F{highest}."

    def add_study(self, study: Study, *, source: Path | None = None, make_current: bool = True) -> StudyView:
        """Open ``study`` (re-opening the same content keeps one view), the current one unless
        ``make_current`` is False (a prior opened to compare with)."""
        existing = self.views.get(study.id)
        if existing is not None and existing.study is not study:
            study.close()
            study = existing.study
        view = existing or StudyView(study)
        self.views[study.id] = view
        if make_current or self.current_study_id is None:
            self.current_study_id = study.id
        if existing is None and self.on_study_added is not None:
            self.on_study_added(study, source)
        return view

    def view(self, study_id: str | None = None) -> StudyView:
        """The view of ``study_id``, or of the current study when omitted."""
        key = study_id or self.current_study_id
        if key is None:
            raise NoStudyOpenError("No study is open yet; open a DICOM, PNG or JPEG study first.")
        if key not in self.views:
            raise NoStudyOpenError(f"There is no open study with id '{key}'.")
        return self.views[key]

    def check_path(self, path: Path) -> Path:
        """Refuse paths outside ``allowed_roots`` (when configured)."""
        if self.allowed_roots is None:
            return path
        resolved = path.resolve()
        if any(resolved.is_relative_to(root.resolve()) for root in self.allowed_roots):
            return path
        raise UnreadableStudyError("That file is outside the folders Loupe may open.")

    def close(self) -> None:
        for view in self.views.values():
            view.study.close()
        self.views.clear()
        self._derived.clear()
        self.current_study_id = None
