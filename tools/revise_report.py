"""revise_report: change the current report with explicit, typed edits — a new version each time.

The model turns a clinician's request ("shorten the impression", "drop F2, it is a vessel")
into edit operations; each revision is a new immutable version with its author, time and
reason. All edits of one call apply together or not at all. A model's edit that would state a
measurement no tool produced, or word a normal study, is rejected with the reason; with no
finding listed, the Impression is the physician's alone. The clinician's own edits (through the
app, ``revise(..., author="clinician")``) may set sizes they measured and say what they read.
A revision keeps the report's comparison with a prior; its lines follow the findings listed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tools.context import ToolContext, ToolResult
from tools.draft_report import ReportOutput, report_comparison, report_finding, template_narrative
from tools.errors import ModelUnavailableError
from tools.report.document import (IMPRESSION_PENDING, AddFinding, AddRecommendation, Author, ClinicalReport,
                                   EditFinding, RemoveFinding, ReorderFindings, ReportError, ReportHistory, SetSection,
                                   apply_edits, guard_normal_wording, guard_numbers)
from tools.report.markdown import report_markdown


class Restyle(BaseModel):
    """Reword the narrative (impression, recommendations, finding wording) in a style; needs a
    language model, and may not change any number."""

    op: Literal["restyle"] = "restyle"
    style: str = Field(min_length=2, description="e.g. 'concise', 'plain language', 'formal'.")


RevisionEdit = Annotated[SetSection | EditFinding | RemoveFinding | AddFinding | ReorderFindings | AddRecommendation
                         | Restyle, Field(discriminator="op")]


class ReviseReportInput(BaseModel):
    """Arguments of ``revise_report``."""

    edits: list[RevisionEdit] = Field(min_length=1, description=(
        "Edit operations, applied in order: set_section (impression, technique, recommendations, limitations), "
        "edit_finding (location, characteristics; size only as the tools measured it), remove_finding, add_finding, "
        "reorder_findings, add_recommendation, restyle."))
    reason: str = Field(min_length=1, description="Short reason for the change, in the clinician's words.")
    study_id: str | None = Field(default=None, description="Which open study; default the current one.")


def revise_report(ctx: ToolContext, args: ReviseReportInput) -> ToolResult:
    """Revise the current report with explicit edit operations; the result is a new version.

    Sizes and other numbers cannot be changed by wording: only the measuring tools or the
    clinician set them. A signed version is never changed; revising it starts a new draft.
    """
    return ToolResult(output=revise(ctx, args.edits, author="model", reason=args.reason, study_id=args.study_id))


def revise(ctx: ToolContext, edits: list, *, author: Author, reason: str, study_id: str | None = None,
           author_name: str | None = None) -> ReportOutput:
    """Apply ``edits`` to the current version and store the result as the next version; edits
    that change nothing add no version and say so."""
    study = ctx.view(study_id).study
    history = history_of(ctx, study_id)
    _check_ids(ctx, edits, study.id)
    report = history.current
    for index, edit in enumerate(edits, start=1):
        try:
            report = (_restyled(ctx, report, edit.style) if isinstance(edit, Restyle) else
                      apply_edits(report, [edit], author=author, findings=ctx.findings,
                                  describe=lambda finding: report_finding(study, finding)))
        except ReportError as error:
            raise ReportError(f"Edit {index} ({edit.op}) was not applied, so nothing changed: {error}") from error
    report = _narrative_follows_findings(ctx, study, history.current, report, edits)
    report = _comparison_follows_findings(ctx, history.current, report)
    report.check_findings_exist(ctx.findings)
    current = history.current
    if report.same_content(current):
        return ReportOutput(study_id=study.id, version=current.version, status=current.status,
                            markdown=report_markdown(current), changed=False,
                            notes=[f"Nothing changed: the edits leave version {current.version} as it is, "
                                   "so no new version was made."])
    notes = [] if current.status == "draft" else [
        f"Version {current.version} is signed and stays as it is; this revision is a new draft."]
    version = history.add(report, author=author, author_name=author_name, reason=reason)
    return ReportOutput(study_id=study.id, version=version.version, status=version.status,
                        markdown=report_markdown(version), notes=notes)


def _check_ids(ctx: ToolContext, edits: list, study_id: str) -> None:
    """A finding id of another study (or one a later search retired) is refused with where it was,
    never taken for a finding of this study."""
    for edit in edits:
        finding_id = getattr(edit, "finding_id", None)
        if isinstance(edit, AddFinding) and finding_id is not None:
            problem = ctx.finding_not_here(finding_id, study_id)
            if problem is not None:
                raise ReportError(f"Nothing changed: {problem}")


def _narrative_follows_findings(ctx: ToolContext, study, before: ClinicalReport, after: ClinicalReport,
                                edits: list) -> ClinicalReport:
    """When the findings listed change and the Impression is still the template's (or pending), the
    template's Impression and recommendations are written again for the new list, so the report
    never says nothing was found beside a finding; an Impression the reader or a model wrote,
    or one set in the same revision, stays as it is."""
    if {f.finding_id for f in before.findings} == {f.finding_id for f in after.findings}:
        return after  # the same findings (perhaps reordered): the Impression's wording stays
    if any(isinstance(e, SetSection) and e.section == "impression" for e in edits):
        return after
    old_impression, old_recommendations = template_narrative(study, before.findings, ctx.findings, before.comparison)
    if after.impression.strip() not in ("", IMPRESSION_PENDING, old_impression):
        return after
    impression, recommendations = template_narrative(study, after.findings, ctx.findings, after.comparison)
    update: dict = {"impression": impression}
    if after.recommendations == old_recommendations:
        update["recommendations"] = recommendations
    return after.model_copy(update=update)


def _comparison_follows_findings(ctx: ToolContext, before: ClinicalReport, after: ClinicalReport) -> ClinicalReport:
    """The Comparison section states the change of the findings listed: when they change, its
    lines are taken again from the same comparison in the session (a finding added back gets its
    line back), or else only those of findings still listed are kept. The prior stays as it was."""
    listed = [f.finding_id for f in after.findings]
    if after.comparison is None or {f.finding_id for f in before.findings} == set(listed):
        return after
    stored = ctx.comparisons.get(after.study_id)
    if stored is not None and stored.output.prior_study_id == after.comparison.prior_study_id:
        comparison = report_comparison(stored, [ctx.findings[i] for i in listed if i in ctx.findings])
    else:
        kept = set(listed)
        comparison = after.comparison.model_copy(update={"lines": [
            line for line in after.comparison.lines if line.finding_id in kept or line.status == "resolved"]})
    return after.model_copy(update={"comparison": comparison})


def _restyled(ctx: ToolContext, report: ClinicalReport, style: str) -> ClinicalReport:
    if ctx.report_writer is None:
        raise ReportError("Rewording in a style needs the Gemini backend; the offline planner can only make "
                          "explicit edits (set a section, remove or reorder findings, add a recommendation).")
    try:
        narrative = ctx.report_writer.write(report, f"restyle: {style}")
    except ModelUnavailableError as error:
        raise ReportError(f"The model could not reword the report: {error}") from error
    for text in (narrative.impression, *narrative.recommendations, *narrative.characteristics.values()):
        guard_numbers(text, report, ctx.findings)
        guard_normal_wording(text)
    findings = [f.model_copy(update={"characteristics": narrative.characteristics.get(f.finding_id, f.characteristics)})
                for f in report.findings]
    # With no finding listed, the Impression is the reading physician's, whatever the style.
    impression = (narrative.impression.strip() if report.findings else "") or report.impression
    return report.model_copy(update={"impression": impression,
                                     "recommendations": narrative.recommendations or report.recommendations,
                                     "findings": findings})


def history_of(ctx: ToolContext, study_id: str | None = None) -> ReportHistory:
    """The report history of a study (a ReportError when there is none yet)."""
    study = ctx.view(study_id).study
    history = ctx.reports.get(study.id)
    if history is None or not history.versions:
        raise ReportError("There is no report for this study yet; draft one first.")
    return history
