"""The clinical report: a structured draft, immutable versions, typed edits, sign-off.

``ClinicalReport`` is one version. ``ReportHistory`` keeps every version of a study's report:
each edit, restore or sign-off appends a new version with its author, time and reason; nothing
is overwritten. Edits are explicit operations (``ReportEdit``) rather than free text, so what
changed is always clear, and the rule that guards measurements can be enforced: sizes and
positions change only when a tool measured them or the clinician typed them. Neither Loupe nor
a model ever words a normal study (``tools.normal_wording``): a report that lists no finding
says what the search was worth and leaves the Impression to the reading physician. A report
compared with a prior (``ReportComparison``) names it with its date, for the clinician only,
and states each finding's change; one without says "Comparison: None.".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prompts import load_table
from tools.compare.record import ComparisonStatus
from tools.errors import LoupeError
from tools.findings import Finding, FindingId, ToolSizeMethod
from tools.normal_wording import normal_study_phrases

Author = Literal["clinician", "model", "loupe"]
ReportStatus = Literal["draft", "signed"]
AI_LIMITATION = "AI-assisted draft: requires review and sign-off by the reading physician."
#: What a signed version shows in AI_LIMITATION's place: the stored versions all keep AI_LIMITATION
#: (a signed version is a copy of a draft), but once signed it has been reviewed and signed off.
SIGNED_LIMITATION = "Signed by {name} on {date}; drafted with AI assistance (Loupe)."
#: Fields that say which version a report is, not what it says (a revision that changes none of
#: the rest changes nothing).
VERSION_FIELDS = frozenset({"version", "author", "author_name", "reason", "created_at", "status", "signed_by"})
#: The Impression of a draft that lists no finding: Loupe's search cannot show a study is normal,
#: so the reading physician writes it (and must, before signing).
IMPRESSION_PENDING = "To be completed by the reading physician."
#: The Findings section of a report that lists no finding and stores no statement of what the
#: search was worth (one saved before Loupe stored that, or one whose findings were all removed).
NO_FINDINGS_TEXT = "No finding is listed: Loupe's search does not exclude a lesion; see Limitations."
_NUMBER_WITH_UNIT = re.compile(r"(\d+(?:[.,]\d+)?)\s*(mm|cm|px)\b", re.IGNORECASE)


class ReportError(LoupeError):
    """A report action that cannot be done as asked (unknown finding, signed version, invented
    measurement, ...); the message says why."""


#: Who measured a size, as the report says it, by ``Measurement.method``.
_MEASURED_BY = {"segmentation": "Loupe (segmentation)", "gaussian fwhm": "Loupe (Gaussian)"}


class Measurement(BaseModel):
    """A size with its unit; ``source`` says who produced the numbers and, for a tool, ``method``
    how: the long and short axes of the segmented lesion, or a Gaussian fit's widths at half
    maximum (which are not diameters: a reader's measure is about twice as long)."""

    model_config = ConfigDict(frozen=True)

    major: float = Field(gt=0, description="The long axis.")
    minor: float | None = Field(default=None, gt=0, description="The short axis, perpendicular to the long one.")
    unit: Literal["mm", "px"]
    source: Literal["tool", "clinician"] = "tool"
    method: ToolSizeMethod | None = Field(
        default=None, description="How the tool measured; None for the clinician's size (or a report saved before).")

    @property
    def measured_by(self) -> str:
        """'Loupe (segmentation)', 'Loupe (Gaussian)', 'clinician', or 'Loupe' for a tool's size of
        unknown method (a report saved before sizes said how)."""
        if self.source == "clinician":
            return "clinician"
        return _MEASURED_BY.get(self.method or "", "Loupe")

    def text(self) -> str:
        digits = 1 if self.unit == "mm" else 0
        if self.minor is None:
            return f"{self.major:.{digits}f} {self.unit}"
        return f"{self.major:.{digits}f} × {self.minor:.{digits}f} {self.unit}"


class ReportFinding(BaseModel):
    """One finding as the report states it, linked to the session's finding by id."""

    model_config = ConfigDict(frozen=True)

    finding_id: FindingId
    location: str = Field(description="Anatomical region and patient side, in words, where determinable.")
    size: Measurement | None = None
    characteristics: str = ""
    confidence: float | None = Field(default=None, ge=0, le=1)
    verification: str = Field(default="unverified", description="The verification status from the tools.")
    frame: int = Field(default=0, ge=0)
    table_position_mm: float | None = Field(
        default=None, description="The slice's position along the series' normal, in mm, when the header says.")


class StudySummary(BaseModel):
    """What was examined, from allow-listed metadata only."""

    model_config = ConfigDict(frozen=True)

    modality: str | None
    body_part: str | None = None
    technique: str = Field(description="Acquisition in words, e.g. 'CT, 512×512 px, 1 slice, 0.70 mm pixels'.")
    frames: int = Field(default=1, ge=1, description="Frames or slices of the study (a series lists each finding's slice).")


class ComparedLine(BaseModel):
    """One finding as the Comparison section states it: its sizes on the prior and now (long and
    short axis), and how its mean diameter changed."""

    model_config = ConfigDict(frozen=True)

    finding_id: str = Field(pattern=r"^[FP][1-9][0-9]*$",
                            description="F1, ... for a current finding; P1, ... for a prior one gone now.")
    status: ComparisonStatus
    size_then: tuple[float, float] | None = None
    size_now: tuple[float, float] | None = None
    unit: Literal["mm", "px"] = "mm"
    mean_diameter_change: float | None = Field(default=None, description="In ``unit``.")
    mean_diameter_pct: float | None = None
    doubling_time_days: float | None = None


class ReportComparison(BaseModel):
    """The prior a report compares with (from ``compare_with_prior``), and each finding's change.

    ``prior_date`` identifies the patient's history: it is for the clinician's report and the
    PACS, never sent to a model (report writers get the interval at most)."""

    model_config = ConfigDict(frozen=True)

    prior_study_id: str = Field(description="The session's id of the prior, for the SR's references to its images.")
    prior_date: str | None = Field(default=None, description="YYYY-MM-DD.")
    prior_modality: str | None = None
    interval_days: int | None = Field(default=None, ge=0)
    prior_frames: list[int] = Field(default_factory=list, description="Frames of the prior the comparison used.")
    lines: list[ComparedLine] = Field(default_factory=list)


class ClinicalReport(BaseModel):
    """One immutable version of a study's report."""

    model_config = ConfigDict(frozen=True)

    study_id: str
    study: StudySummary
    findings: list[ReportFinding] = Field(default_factory=list)
    impression: str
    recommendations: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=lambda: [AI_LIMITATION])
    search_statement: str | None = Field(
        default=None, description="What the search was worth, shown in Findings when the report lists none.")
    comparison: ReportComparison | None = Field(
        default=None, description="The prior compared with; None: no comparison (or a report saved before).")
    status: ReportStatus = "draft"
    version: int = Field(default=1, ge=1)
    author: Author = "loupe"
    author_name: str | None = Field(default=None, description="Who, when the author is the clinician.")
    reason: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    signed_by: str | None = None

    @model_validator(mode="after")
    def _invariants(self) -> ClinicalReport:
        if AI_LIMITATION not in self.limitations:
            raise ValueError("the limitations must say that this is an AI-assisted draft requiring physician review")
        ids = [f.finding_id for f in self.findings]
        if len(ids) != len(set(ids)):
            raise ValueError("a finding appears twice in the report")
        if (self.status == "signed") != (self.signed_by is not None):
            raise ValueError("a signed report names its signer, and only a signed one does")
        return self

    @property
    def shown_limitations(self) -> list[str]:
        """The limitations as the exports show them: a signed version says who signed it and when
        instead of asking for sign-off."""
        if self.status != "signed":
            return list(self.limitations)
        signed = SIGNED_LIMITATION.format(name=self.signed_by, date=f"{self.created_at:%Y-%m-%d %H:%M} UTC")
        return [signed if item == AI_LIMITATION else item for item in self.limitations]

    def same_content(self, other: ClinicalReport) -> bool:
        """True when ``other`` says exactly what this version says (version metadata aside)."""
        return self.model_dump(exclude=VERSION_FIELDS) == other.model_dump(exclude=VERSION_FIELDS)

    @property
    def findings_statement(self) -> str:
        """What the Findings section says when the report lists no finding."""
        return self.search_statement or NO_FINDINGS_TEXT

    @property
    def comparison_sentences(self) -> list[str]:
        """The Comparison section: which prior (or "None."), then each finding's change."""
        return comparison_sentences(self.comparison)

    def check_findings_exist(self, known: Iterable[str]) -> None:
        missing = sorted({f.finding_id for f in self.findings} - set(known))
        if missing:
            raise ReportError(f"The report refers to {', '.join(missing)}, which the session does not have.")


def comparison_sentences(comparison: ReportComparison | None) -> list[str]:
    """The Comparison section as sentences, worded by ``prompts/report_templates.toml``: the
    prior with its date and the interval, then one sentence per finding; "None." without one."""
    table = load_table("report_templates.toml")["comparison"]
    if comparison is None:
        return [table["none"]]
    return [_prior_sentence(comparison, table), *(_line_sentence(line, table) for line in comparison.lines)]


def _prior_sentence(comparison: ReportComparison, table: dict) -> str:
    days = comparison.interval_days
    interval = "" if days is None else table["interval"].format(days=f"{days} day{'s' if days != 1 else ''}")
    if comparison.prior_date is None:
        return table["prior_undated"].format(modality=comparison.prior_modality or "study", interval=interval)
    return table["prior"].format(modality=comparison.prior_modality or "Study", date=comparison.prior_date,
                                 interval=interval)


def _line_sentence(line: ComparedLine, table: dict) -> str:
    then, now = _size_text(line.size_then, line.unit), _size_text(line.size_now, line.unit)
    if line.status == "resolved":
        return table["resolved"].format(id=line.finding_id, then=f" ({then})" if then else "")
    if line.status == "new":
        return table["new"].format(id=line.finding_id)
    if line.status == "present" or then is None or now is None:  # a size is missing: no change to state
        return table["present"].format(id=line.finding_id, where="on the prior" if then is None else "now")
    doubling = ("" if line.status != "grown" or line.doubling_time_days is None
                else table["doubling"].format(days=f"{line.doubling_time_days:.0f}"))
    return table[line.status].format(id=line.finding_id, then=then, now=now, change=_change_text(line, table),
                                     doubling=doubling)


def _size_text(size: tuple[float, float] | None, unit: str) -> str | None:
    """Long × short axis as the findings table writes a size (``Measurement.text``)."""
    if size is None:
        return None
    digits = 1 if unit == "mm" else 0
    return f"{size[0]:.{digits}f} × {size[1]:.{digits}f} {unit}"


def _change_text(line: ComparedLine, table: dict) -> str:
    digits = 1 if line.unit == "mm" else 0
    amount = "—" if line.mean_diameter_change is None else f"{_signed(line.mean_diameter_change, digits)} {line.unit}"
    percent = "—" if line.mean_diameter_pct is None else f"{_signed(line.mean_diameter_pct, 0)} %"
    return table["change"].format(amount=amount, percent=percent)


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign, never "-0.0" (a rounded-away change reads as +0.0)."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


class ReportNarrative(BaseModel):
    """The prose a language model may write: never numbers of its own (see ``guard_numbers``)."""

    impression: str
    recommendations: list[str] = Field(default_factory=list)
    characteristics: dict[str, str] = Field(default_factory=dict, description="Finding id -> wording.")


# -- edits ---------------------------------------------------------------------------------------


class SetSection(BaseModel):
    op: Literal["set_section"] = "set_section"
    section: Literal["impression", "technique", "recommendations", "limitations"]
    text: str = Field(description="New text; for recommendations/limitations one item per line.")


class EditFinding(BaseModel):
    op: Literal["edit_finding"] = "edit_finding"
    finding_id: FindingId
    location: str | None = None
    characteristics: str | None = None
    size: Measurement | None = Field(default=None, description="Only a tool's measurement, or the clinician's.")


class RemoveFinding(BaseModel):
    op: Literal["remove_finding"] = "remove_finding"
    finding_id: FindingId


class AddFinding(BaseModel):
    op: Literal["add_finding"] = "add_finding"
    finding_id: FindingId = Field(description="A finding of the session not yet in the report.")
    location: str | None = None
    characteristics: str = ""


class ReorderFindings(BaseModel):
    op: Literal["reorder_findings"] = "reorder_findings"
    order: list[FindingId] = Field(description="All finding ids of the report, in the new order.")


class AddRecommendation(BaseModel):
    op: Literal["add_recommendation"] = "add_recommendation"
    text: str = Field(min_length=1)


ReportEdit = Annotated[SetSection | EditFinding | RemoveFinding | AddFinding | ReorderFindings | AddRecommendation,
                       Field(discriminator="op")]


def apply_edits(report: ClinicalReport, edits: Iterable[ReportEdit], *, author: Author,
                findings: Mapping[str, Finding], describe: callable) -> ClinicalReport:
    """The report with ``edits`` applied (a new object; version fields are set by the history).

    ``findings`` are the session's findings (for measurements and for adding); ``describe``
    turns a session finding into a ``ReportFinding`` for ``add_finding``.
    """
    data = report.model_dump()
    for edit in edits:
        _apply(data, edit, author=author, findings=findings, describe=describe, before=report)
    return ClinicalReport.model_validate(data)


def _apply(data: dict, edit: ReportEdit, *, author: Author, findings: Mapping[str, Finding], describe,
           before: ClinicalReport) -> None:
    listed = {f["finding_id"]: f for f in data["findings"]}

    def guard(text: str) -> None:
        if author == "model":  # the clinician's own words are theirs to sign
            guard_numbers(text, before, findings)
            guard_normal_wording(text)

    if isinstance(edit, SetSection):
        guard(edit.text)
        if edit.section == "impression" and author == "model" and not data["findings"]:
            raise ReportError("With no finding listed, the Impression is the reading physician's to write, "
                              "not the model's.")
        if edit.section == "impression":
            data["impression"] = edit.text.strip()
        elif edit.section == "technique":
            data["study"]["technique"] = edit.text.strip()
        else:
            items = [line.strip(" -•\t") for line in edit.text.splitlines() if line.strip(" -•\t")]
            if edit.section == "limitations" and AI_LIMITATION not in items:
                items.append(AI_LIMITATION)  # this one limitation is not negotiable
            data[edit.section] = items
    elif isinstance(edit, EditFinding):
        target = _listed(listed, edit.finding_id)
        if edit.location is not None:
            target["location"] = edit.location.strip()
        if edit.characteristics is not None:
            guard(edit.characteristics)
            target["characteristics"] = edit.characteristics.strip()
        if edit.size is not None:
            target["size"] = _checked_size(edit, author, findings).model_dump()
    elif isinstance(edit, RemoveFinding):
        _listed(listed, edit.finding_id)
        data["findings"] = [f for f in data["findings"] if f["finding_id"] != edit.finding_id]
    elif isinstance(edit, AddFinding):
        if edit.finding_id in listed:
            raise ReportError(f"{edit.finding_id} is already in the report.")
        if edit.finding_id not in findings:
            raise ReportError(f"The session has no finding {edit.finding_id}.")
        guard(edit.characteristics)
        added = describe(findings[edit.finding_id]).model_dump()
        added["location"] = edit.location or added["location"]
        added["characteristics"] = edit.characteristics or added["characteristics"]
        data["findings"].append(added)
    elif isinstance(edit, ReorderFindings):
        if sorted(edit.order) != sorted(listed):
            raise ReportError("A new order must list every finding of the report exactly once: "
                              f"{', '.join(sorted(listed))}.")
        data["findings"] = [listed[i] for i in edit.order]
    elif isinstance(edit, AddRecommendation):
        guard(edit.text)
        data["recommendations"].append(edit.text.strip())


def _listed(listed: dict, finding_id: str) -> dict:
    if finding_id not in listed:
        raise ReportError(f"{finding_id} is not in the report; findings listed: {', '.join(listed) or 'none'}.")
    return listed[finding_id]


def _checked_size(edit: EditFinding, author: Author, findings: Mapping[str, Finding]) -> Measurement:
    """A new size is kept only if a tool measured it, or the clinician typed it."""
    if author == "clinician":
        return edit.size.model_copy(update={"source": "clinician"})
    measured = measured_size(findings.get(edit.finding_id))
    if measured is not None and _same_size(measured, edit.size):
        return measured
    raise ReportError(f"The size of {edit.finding_id} was not changed: sizes come from the measuring tools "
                      "(run fit_gaussian again) or from the clinician, not from the model's wording.")


def measured_size(finding: Finding | None) -> Measurement | None:
    """The finding's current size (mm where the study has spacing), with who measured it: a tool
    and its method, or the clinician."""
    if finding is None:
        return None
    by_clinician = finding.size_method == "clinician"
    who = {"source": "clinician"} if by_clinician else {"source": "tool", "method": finding.size_method}
    if finding.size_mm is not None:
        return Measurement(major=finding.size_mm[0], minor=finding.size_mm[1], unit="mm", **who)
    if finding.size_px is not None:
        return Measurement(major=finding.size_px[0], minor=finding.size_px[1], unit="px", **who)
    return None


def _same_size(a: Measurement, b: Measurement) -> bool:
    tolerance = 0.06 if a.unit == "mm" else 0.6  # the report rounds to 0.1 mm / 1 px
    minors_match = b.minor is None or (a.minor is not None and abs(a.minor - b.minor) <= tolerance)
    return a.unit == b.unit and abs(a.major - b.major) <= tolerance and minors_match


def guard_numbers(text: str, before: ClinicalReport, findings: Mapping[str, Finding]) -> None:
    """Refuse model-written text that states a measurement (number and unit) no tool produced
    and the report did not already state."""
    allowed = _stated_measurements(before)
    for finding in findings.values():
        allowed |= _variants(finding.size_mm or (), "mm") | _variants(finding.size_px or (), "px")
    invented = [f"{value} {unit}" for value, unit in _NUMBER_WITH_UNIT.findall(text)
                if (_normalise(value), unit.lower()) not in allowed]
    if invented:
        raise ReportError(f"Not changed: the new text states {', '.join(invented)}, which no tool measured; "
                          "measurements come from the tools or the clinician.")


def guard_normal_wording(text: str) -> None:
    """Refuse model-written text that reads as a normal study, which Loupe's search cannot show."""
    phrases = normal_study_phrases(text)
    if phrases:
        raise ReportError(f"Not changed: '{phrases[0]}' reads as a normal study, which Loupe's search cannot "
                          "show; only the reading physician may write that.")


def _stated_measurements(report: ClinicalReport) -> set[tuple[str, str]]:
    stated: set[tuple[str, str]] = set()
    for finding in report.findings:
        if finding.size is not None:
            values = [v for v in (finding.size.major, finding.size.minor) if v is not None]
            stated |= _variants(values, finding.size.unit)
    stated |= _compared_measurements(report.comparison)
    texts = [report.impression, *report.recommendations, *(f.characteristics for f in report.findings)]
    for value, unit in _NUMBER_WITH_UNIT.findall(" ".join(texts)):
        stated.add((_normalise(value), unit.lower()))
    return stated


def _compared_measurements(comparison: ReportComparison | None) -> set[tuple[str, str]]:
    """The Comparison section's sizes and changes, which a model may quote (a tool measured them)."""
    stated: set[tuple[str, str]] = set()
    for line in comparison.lines if comparison else ():
        values = [*(line.size_then or ()), *(line.size_now or ())]
        if line.mean_diameter_change is not None:
            values.append(abs(line.mean_diameter_change))
        stated |= _variants(values, line.unit)
    return stated


def _variants(values: Iterable[float], unit: str) -> set[tuple[str, str]]:
    """How a measured value may be written: 0 or 1 decimals, and in cm for mm values."""
    variants = set()
    for value in values:
        variants |= {(f"{value:.0f}", unit), (f"{value:.1f}", unit)}
        if unit == "mm":
            variants |= {(f"{value / 10:.1f}", "cm"), (f"{value / 10:.2f}", "cm")}
    return variants


def _normalise(value: str) -> str:
    return value.replace(",", ".")


# -- versions ------------------------------------------------------------------------------------


class ReportHistory(BaseModel):
    """Every version of one study's report, oldest first."""

    versions: list[ClinicalReport] = Field(default_factory=list)

    @property
    def current(self) -> ClinicalReport:
        if not self.versions:
            raise ReportError("There is no report yet; draft one first.")
        return self.versions[-1]

    def version(self, number: int) -> ClinicalReport:
        if not 1 <= number <= len(self.versions):
            raise ReportError(f"There is no version {number}; versions 1 to {len(self.versions)} exist.")
        return self.versions[number - 1]

    def add(self, report: ClinicalReport, *, author: Author, reason: str, author_name: str | None = None,
            status: ReportStatus = "draft", signed_by: str | None = None) -> ClinicalReport:
        """Append ``report`` as the next version."""
        version = report.model_copy(update={
            "version": len(self.versions) + 1, "author": author, "author_name": author_name, "reason": reason,
            "status": status, "signed_by": signed_by, "created_at": datetime.now(UTC)})
        self.versions.append(ClinicalReport.model_validate(version.model_dump()))
        return self.versions[-1]

    def restore(self, number: int, *, author: Author, author_name: str | None = None) -> ClinicalReport:
        """Make an old version current again — as a new version, so nothing is lost."""
        return self.add(self.version(number), author=author, author_name=author_name,
                        reason=f"restored version {number}")

    def sign(self, number: int, signer: str) -> ClinicalReport:
        """The clinician signs version ``number`` (the current one): a new, signed version."""
        if number != self.current.version:
            raise ReportError(f"Only the current version ({self.current.version}) can be signed; restore "
                              f"version {number} first if that is the one to sign.")
        if self.current.status == "signed":
            raise ReportError(f"Version {number} is already signed.")
        if not signer.strip():
            raise ReportError("Signing needs the signing physician's name.")
        if self.current.impression.strip() in ("", IMPRESSION_PENDING):
            raise ReportError(f"Version {number} has no Impression yet: write the Impression first, then sign.")
        return self.add(self.current, author="clinician", author_name=signer.strip(), reason="signed",
                        status="signed", signed_by=signer.strip())

    def diff(self, old: int, new: int, render) -> str:
        """A unified diff between two versions as ``render`` (e.g. Markdown) shows them."""
        a, b = render(self.version(old)).splitlines(), render(self.version(new)).splitlines()
        return "\n".join(difflib.unified_diff(a, b, f"version {old}", f"version {new}", lineterm=""))
