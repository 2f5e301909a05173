"""draft_report: a structured report from the session's verified, measured findings.

Numbers (sizes, confidences, positions) come from the tools only. The narrative — each
finding's characteristics, the impression, the recommendations — comes from the report writer
(a language model, ``ctx.report_writer``) when one is configured, else from the templates in
``prompts/report_templates.toml``. A model's wording that states a measurement no tool produced,
or reads as a normal study, is replaced by the template's, and the draft says so.

A draft that lists no finding is never a normal study: its Findings say what the search was
worth on this kind of image (``detect_anomalies.study_assessment``), its Impression is left to
the reading physician (``IMPRESSION_PENDING``), and every draft's limitations give the
detector's measured sensitivity.

A draft of a study compared with a prior (``compare_with_prior``) carries that comparison
(``report_comparison``): the prior's date for the clinician, and the change of each finding it
lists and of each prior finding gone now. The report writer is never sent it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

from prompts import load_table
from tools.compare.record import ComparedFinding, LesionThere, PriorComparison
from tools.context import ToolContext, ToolResult
from tools.detect_anomalies import study_assessment
from tools.detection.performance import Assessment
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import ModelUnavailableError
from tools.findings import Finding, FindingId
from tools.fit_gaussian import FitGaussianInput, fit_gaussian
from tools.compare.change import status_reliability
from tools.report.document import (AI_LIMITATION, IMPRESSION_PENDING, ClinicalReport, ComparedLine, ReportComparison,
                                   ReportError, ReportFinding, ReportHistory, StudySummary, guard_normal_wording,
                                   guard_numbers, measured_size)
from tools.report.location import location_in_words, table_position_mm
from tools.report.markdown import report_markdown
from tools.study import Study


class DraftReportInput(BaseModel):
    """Arguments of ``draft_report``."""

    study_id: str | None = Field(default=None, description="Which open study; default the current one.")
    finding_ids: list[FindingId] | None = Field(
        default=None, description="Findings to report; default every finding that reached the anomaly threshold "
                                  "and was not rejected.")
    use_model_wording: bool = Field(default=True, description="Let the language model word the narrative, if one is configured.")


class ReportOutput(BaseModel):
    """A report version, as drafted or revised."""

    study_id: str
    version: int
    status: str
    markdown: str
    notes: list[str] = Field(default_factory=list, description="What the clinician should know about this version.")
    changed: bool = Field(default=True, description="False when a revision changed nothing, so no version was added.")


def draft_report(ctx: ToolContext, args: DraftReportInput) -> ToolResult:
    """Draft a structured report (technique, findings with sizes, impression, recommendations,
    limitations) from the session's findings; every draft is a new version.

    Sizes and confidences come from the measuring tools; only the wording may come from the model.
    """
    view = ctx.view(args.study_id)
    study = view.study
    findings = _chosen(ctx, study, args.finding_ids)
    _measure(ctx, study, findings)
    findings = [ctx.findings[f.id] for f in findings]
    assessment = study_assessment(ctx, study, view.frame, anomaly=bool(findings))
    statement = None if findings else _search_statement(ctx, study, assessment)
    comparison = report_comparison(ctx.comparisons.get(study.id), findings)
    report = template_report(study, findings, assessment, statement, comparison).model_copy(
        update={"comparison": comparison})
    notes: list[str] = []
    author = "loupe"
    if args.use_model_wording and ctx.report_writer is not None:
        report, notes = _worded(ctx, report)
        author = "model"
    history = ctx.reports.setdefault(study.id, ReportHistory())
    version = history.add(report, author=author, reason="drafted")
    return ToolResult(output=ReportOutput(study_id=study.id, version=version.version, status=version.status,
                                          markdown=report_markdown(version), notes=notes))


def report_comparison(comparison: PriorComparison | None, listed: Iterable[Finding]) -> ReportComparison | None:
    """What the report states of a comparison with a prior: the lines of the findings it lists
    (``listed``, the session's), and of the prior's findings gone now (``resolved``)."""
    if comparison is None:
        return None
    by_id = {finding.id: finding for finding in listed}
    output = comparison.output
    return ReportComparison(
        prior_study_id=output.prior_study_id, prior_date=comparison.prior_date,
        prior_modality=comparison.prior_modality, interval_days=output.interval_days,
        prior_frames=comparison.prior_frames,
        lines=[_compared_line(item, by_id.get(item.id)) for item in output.findings
               if item.id in by_id or item.status == "resolved"])


def _compared_line(item: ComparedFinding, finding: Finding | None) -> ComparedLine:
    there = [place for place in (item.prior, item.current) if place is not None]
    in_mm = any(place.size_mm is not None for place in there)  # both studies have a pixel spacing

    def size(place: LesionThere | None) -> tuple[float, float] | None:
        return None if place is None else (place.size_mm if in_mm else place.size_px)

    line = ComparedLine(finding_id=item.id, status=item.status, size_then=size(item.prior),
                        size_now=_unrounded(size(item.current), finding, in_mm), unit="mm" if in_mm else "px")
    change = item.change
    if change is None:
        return line
    # Without pixel spacing the change is in pixels: the mean of the two axes' changes.
    amount = (change.mean_diameter_mm if change.mean_diameter_mm is not None
              else (change.long_axis + change.short_axis) / 2)
    return line.model_copy(update={"unit": change.unit, "mean_diameter_change": amount,
                                   "mean_diameter_pct": change.mean_diameter_pct,
                                   "doubling_time_days": change.doubling_time_days})


def _unrounded(size: tuple[float, float] | None, finding: Finding | None, in_mm: bool) -> tuple[float, float] | None:
    """The finding's own size when the comparison's is the same measurement rounded to 0.01, so
    that the Comparison and the findings table never differ by a rounding (6.745 mm: 6.7, not 6.8)."""
    own = None if finding is None else (finding.size_mm if in_mm else finding.size_px)
    if size is None or own is None or any(abs(a - b) > 0.0051 for a, b in zip(size, own)):
        return size
    return (own[0], own[1])


def _chosen(ctx: ToolContext, study: Study, ids: list[str] | None) -> list[Finding]:
    known = ctx.study_findings(study.id)
    if ids is None:
        reportable = [f for f in known if f.confidence >= ANOMALY_THRESHOLD
                      and (f.verification is None or f.verification.status != "rejected")]
        return sorted(reportable, key=lambda f: -f.confidence)
    by_id = {f.id: f for f in known}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ReportError(f"There is no finding {', '.join(missing)} on this study; run detect_anomalies first.")
    return [by_id[i] for i in ids]


def _search_statement(ctx: ToolContext, study: Study, assessment: Assessment) -> str | None:
    """What the search was worth, for a draft that lists no finding; None (the generic statement)
    when no search has run, or when reportable findings were left out on purpose."""
    searched = ctx.study_findings(study.id)
    return assessment.reason if searched and not _chosen(ctx, study, None) else None


def _measure(ctx: ToolContext, study: Study, findings: list[Finding]) -> None:
    """Fit the findings that have no size yet, so the report never states a size no tool made."""
    unmeasured = [f.id for f in findings if measured_size(f) is None]
    if unmeasured:
        fit_gaussian(ctx, FitGaussianInput(finding_ids=unmeasured, study_id=study.id))


def template_report(study: Study, findings: list[Finding], assessment: Assessment,
                    search_statement: str | None = None, comparison: ReportComparison | None = None) -> ClinicalReport:
    """The report as the offline template words it; ``assessment`` is what the detector's search is
    worth on this kind of image, ``search_statement`` what Findings say when none is listed,
    ``comparison`` what changed since a prior (said in the Impression too)."""
    table = load_table("report_templates.toml")
    reported = [_report_finding(study, f, table) for f in findings]
    impression, recommendations = template_narrative(study, reported, {f.id: f for f in findings}, comparison)
    limitations = [AI_LIMITATION, table["limitations"]["offline"],
                   table["limitations"]["sensitivity"].format(sensitivity=assessment.sensitivity)]
    if any(f.confidence is not None for f in reported):
        limitations.append(table["limitations"]["confidence"].format(meaning=assessment.confidence_meaning))
    if reported:
        limitations.append(table["limitations"]["sizes"])
    if study.pixel_spacing_mm(0) is None:
        limitations.append(table["limitations"]["no_spacing"])
    if comparison is not None:
        limitations.append(status_reliability(study.safe.modality))
    return ClinicalReport(study_id=study.id, study=study_summary(study), findings=reported, impression=impression,
                          recommendations=list(recommendations), limitations=limitations,
                          search_statement=search_statement)


def template_narrative(study: Study, reported: list[ReportFinding], findings: Mapping[str, Finding],
                       comparison: ReportComparison | None = None) -> tuple[str, list[str]]:
    """The template's Impression and recommendations for the findings a report lists (the
    physician's Impression pending when it lists none); ``findings`` are the session's, for labels;
    with a ``comparison``, each finding's status since the prior, and no advice to compare."""
    table = load_table("report_templates.toml")
    if not reported:
        return IMPRESSION_PENDING, list(table["recommendations"]["none"])
    since = {} if comparison is None else {line.finding_id: line.status for line in comparison.lines}
    listing = "; ".join(table["impression"]["finding"].format(
        id=f.finding_id, label=_label(findings, f), location=f.location,
        size=f", {f.size.text()}" if f.size else "",
        since=table["impression"]["since"][since[f.finding_id]] if f.finding_id in since else "") for f in reported)
    modality = (study.safe.modality or "").upper()
    advice = table["recommendations_compared" if comparison is not None else "recommendations"]
    return (table["impression"]["findings"].format(count=len(reported), listing=listing),
            list(advice.get(modality, advice["default"])))


def study_summary(study: Study) -> StudySummary:
    safe = study.safe
    spacing = study.pixel_spacing_mm(0)
    parts = [safe.modality or "Image", f"{safe.columns}×{safe.rows} px",
             f"{study.frame_count} frame{'s' if study.frame_count != 1 else ''}"]
    parts.append(f"pixel spacing {_as_coded(spacing[0])} × {_as_coded(spacing[1])} mm" if spacing
                 else "no pixel spacing")
    if safe.slice_thickness_mm:
        parts.append(f"slice thickness {_as_coded(safe.slice_thickness_mm)} mm")
    return StudySummary(modality=safe.modality, body_part=safe.body_part, technique=", ".join(parts) + ".",
                        frames=study.frame_count)


def _as_coded(value: float) -> str:
    """A header value as the header writes it (1.25, not 1.2), without float noise beyond 4 decimals."""
    return f"{round(value, 4):g}"


def _report_finding(study: Study, finding: Finding, table: dict) -> ReportFinding:
    status = finding.verification.status if finding.verification else "unverified"
    cnr = finding.verification.contrast_to_noise if finding.verification else None
    wording = table["characteristics"][status].format(
        label=finding.label, cnr=f" (contrast-to-noise {cnr:.1f})" if cnr is not None else "")
    position = table_position_mm(study, finding.frame) if study.frame_count > 1 else None
    return ReportFinding(finding_id=finding.id, location=location_in_words(study, finding),
                         size=measured_size(finding), characteristics=wording,
                         confidence=round(finding.confidence, 2), verification=status, frame=finding.frame,
                         table_position_mm=None if position is None else round(position, 2))


def report_finding(study: Study, finding: Finding) -> ReportFinding:
    """A session finding as the report first states it (for ``add_finding`` edits)."""
    return _report_finding(study, finding, load_table("report_templates.toml"))


def _label(findings: Mapping[str, Finding], reported: ReportFinding) -> str:
    """The finding's label; for one the session no longer holds, the report's own wording of it."""
    finding = findings.get(reported.finding_id)
    return finding.label if finding is not None else reported.characteristics.split(";")[0] or "finding"


def _worded(ctx: ToolContext, report: ClinicalReport) -> tuple[ClinicalReport, list[str]]:
    """The model's wording of the narrative fields, each kept only if it invents no numbers and
    does not read as a normal study; with no finding listed, the Impression stays the physician's."""
    try:
        narrative = ctx.report_writer.write(report, "draft")
    except ModelUnavailableError as error:
        return report, [f"Worded from the template: {error}"]
    notes: list[str] = []
    guards = ((lambda text: guard_numbers(text, report, ctx.findings), "stated a measurement no tool made"),
              (guard_normal_wording, "read as a normal study, which Loupe's search cannot show"))

    def kept(text: str, what: str) -> bool:
        for guard, why in guards:
            try:
                guard(text)
            except ReportError:
                notes.append(f"The model's {what} {why}; the template's wording was kept.")
                return False
        return bool(text.strip())

    impression = report.impression
    if report.findings and kept(narrative.impression, "impression"):
        impression = narrative.impression.strip()
    recommendations = [r.strip() for r in narrative.recommendations if kept(r, "recommendation")]
    findings = []
    for finding in report.findings:
        text = narrative.characteristics.get(finding.finding_id, "")
        findings.append(finding.model_copy(update={"characteristics": text.strip()})
                        if text and kept(text, f"wording of {finding.finding_id}") else finding)
    return report.model_copy(update={"impression": impression, "findings": findings,
                                     "recommendations": recommendations or report.recommendations}), notes
