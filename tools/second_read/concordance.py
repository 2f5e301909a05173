"""The concordance of a second read, and its addendum to the report.

Concordance rules
-----------------
*AI findings* are the session's automatic findings on the frame that reach the anomaly threshold
and were not rejected by verification (the ones a report would state). Each is judged on its
*home step*: the most specific focal step whose region contains its centre (smallest region,
first in checklist order on a tie) — fixed by the checklist and the findings, not by which
steps were answered, so it is predictable. Then:

- **both** — a clinician finding marks the same lesion (centres within either lesion's half
  size), or the clinician agreed on the home step;
- **AI-only** — the clinician disagreed or was uncertain on the home step, did not check it, or
  no step's region contains the finding (the reason says which);
- **clinician-only** — clinician findings that match no AI finding (a weaker, sub-threshold
  candidate at the same place is named);
- **disagreements** — every step answered "disagree", with its note, its findings and a crop.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, Field

from tools.checklists.catalogue import ResolvedRegion, load_checklists
from tools.checklists.record import Assessment, SecondReadState
from tools.context import Artifact, ToolContext
from tools.draft_report import DraftReportInput, draft_report
from tools.findings import Finding
from tools.report.document import AddFinding, SetSection
from tools.revise_report import revise
from tools.second_read.steps import (
    ai_findings,
    crop_png,
    home_steps,
    is_called,
    step_regions,
    step_window,
    verification_words,
    zoom_bounds,
)
from tools.study import Study

ADDENDUM_PREFIX = "Second-read addendum"
_FINDING_ID = re.compile(r"\b[Ff]([1-9]\d*)\b")
#: Two marks are the same lesion when their centres lie within either lesion's half size (and
#: at least this many px apart never separates them: clicks are not pixel-exact).
MIN_MATCH_PX = 8.0


class ConcordantItem(BaseModel):
    ai_finding_id: str
    clinician_finding_id: str | None = None
    step_id: str | None
    basis: str = Field(description="'clinician marked it' or 'agreed on the step'.")


class AiOnlyItem(BaseModel):
    finding_id: str
    step_id: str | None
    reason: str


class ClinicianOnlyItem(BaseModel):
    finding_id: str
    step_id: str | None = Field(description="None when entered before the read.")
    label: str
    verification: str
    nearby_weaker_candidate: str | None = None


class DisagreementItem(BaseModel):
    step_number: int
    step_id: str
    title: str
    note: str
    ai_finding_ids: list[str]
    clinician_finding_ids: list[str]
    crop: str


class StepTime(BaseModel):
    number: int
    step_id: str
    title: str
    assessment: Assessment | None
    seconds: float
    note: str = ""


class ConcordanceCounts(BaseModel):
    both: int
    ai_only: int
    clinician_only: int
    disagreements: int
    checked_steps: int
    unchecked_steps: int
    total_steps: int


class Concordance(BaseModel):
    """The concordance of a second read."""

    study_id: str
    checklist_id: str
    counts: ConcordanceCounts
    both: list[ConcordantItem]
    ai_only: list[AiOnlyItem]
    clinician_only: list[ClinicianOnlyItem]
    disagreements: list[DisagreementItem]
    steps: list[StepTime]
    unchecked: list[str] = Field(description="Ids of the steps not answered.")
    total_seconds: float
    pre_read_note: str = ""


# == concordance ================================================================================
def _same_lesion(a: Finding, b: Finding) -> bool:
    if a.frame != b.frame:
        return False
    reach = max(0.5 * max(a.bbox_px.width, a.bbox_px.height), 0.5 * max(b.bbox_px.width, b.bbox_px.height), MIN_MATCH_PX)
    return math.dist(a.center_px, b.center_px) <= reach


def concordance(ctx: ToolContext, study: Study, state: SecondReadState) -> tuple[Concordance, list[Artifact]]:
    """The concordance of the read as it stands (see the module docstring for the rules)."""
    steps = state.checklist.steps
    ai = ai_findings(ctx, state)
    called = [f for f in ai if is_called(f)]
    mine = [ctx.findings[i] for i in state.clinician_finding_ids() if i in ctx.findings]
    step_of_mark = {m.finding_id: m.step_id for m in state.marks}
    regions = step_regions(ctx, study, state)
    homes = home_steps(ctx, study, state, regions)
    both: list[ConcordantItem] = []
    ai_only: list[AiOnlyItem] = []
    for finding in called:
        home = homes.get(finding.id)
        step_id = None if home is None else steps[home].id
        match = next((c for c in mine if _same_lesion(finding, c)), None)
        assessment = None if home is None else state.steps[home].assessment
        if match is not None:
            both.append(ConcordantItem(ai_finding_id=finding.id, clinician_finding_id=match.id, step_id=step_id,
                                       basis="clinician marked it"))
        elif assessment == "agree":
            both.append(ConcordantItem(ai_finding_id=finding.id, step_id=step_id, basis="agreed on the step"))
        else:
            ai_only.append(AiOnlyItem(finding_id=finding.id, step_id=step_id, reason=_ai_only_reason(home, assessment)))
    clinician_only = [
        ClinicianOnlyItem(finding_id=c.id, step_id=step_of_mark.get(c.id), label=c.label,
                          verification=verification_words(c),
                          nearby_weaker_candidate=next((f.id for f in ai if not is_called(f) and _same_lesion(f, c)), None))
        for c in mine if not any(_same_lesion(f, c) for f in called)]
    disagreements, artifacts = _disagreements(ctx, study, state, homes, regions)
    times = [StepTime(number=i + 1, step_id=s.id, title=s.title, assessment=r.assessment, seconds=round(r.seconds, 1),
                      note=r.note) for i, (s, r) in enumerate(zip(steps, state.steps, strict=True))]
    unchecked = [r.step_id for r in state.steps if r.assessment is None]
    counts = ConcordanceCounts(both=len(both), ai_only=len(ai_only), clinician_only=len(clinician_only),
                               disagreements=len(disagreements), checked_steps=state.checked(),
                               unchecked_steps=len(unchecked), total_steps=len(steps))
    summary = Concordance(study_id=study.id, checklist_id=state.checklist_id, counts=counts, both=both,
                          ai_only=ai_only, clinician_only=clinician_only, disagreements=disagreements, steps=times,
                          unchecked=unchecked, total_seconds=round(sum(t.seconds for t in times), 1),
                          pre_read_note=state.pre_read_note)
    return summary, artifacts


def _ai_only_reason(home: int | None, assessment: Assessment | None) -> str:
    if home is None:
        return "outside every checklist region"
    return {"disagree": "the clinician disagreed", "uncertain": "the clinician was uncertain",
            None: "its step was not checked"}[assessment]


def _disagreements(ctx: ToolContext, study: Study, state: SecondReadState, homes: dict[str, int | None],
                   regions: list[ResolvedRegion]) -> tuple[list[DisagreementItem], list[Artifact]]:
    """Every step answered 'disagree', with a crop of its region and its findings."""
    steps = state.checklist.steps
    items, artifacts = [], []
    for index, record in enumerate(state.steps):
        if record.assessment != "disagree":
            continue
        step = steps[index]
        ai_ids = [fid for fid, home in homes.items() if home == index and is_called(ctx.findings[fid])]
        drawn = [ctx.findings[i] for i in [*ai_ids, *record.clinician_finding_ids] if i in ctx.findings]
        bounds = zoom_bounds(study, drawn, regions[index].bounds) if step.zoom == "findings" else regions[index].bounds
        name = f"second-read-disagreement-{index + 1:02d}-{step.id}.png"
        window, _ = step_window(study, step)
        data = crop_png(study, state.frame, window, bounds, drawn, f"Disagreement · step {index + 1} · {step.title}")
        artifacts.append(Artifact(name=name, data=data, caption=f"Disagreement on step {index + 1}: {step.title}."))
        items.append(DisagreementItem(step_number=index + 1, step_id=step.id, title=step.title, note=record.note,
                                      ai_finding_ids=ai_ids, clinician_finding_ids=list(record.clinician_finding_ids),
                                      crop=name))
    return items, artifacts


# == wording and the report addendum ============================================================
def summary_text(summary: Concordance) -> str:
    """The concordance in a few lines (the offline answer and the CLI's text output)."""
    counts = summary.counts
    checklist = load_checklists()[summary.checklist_id]
    lines = [(f"Second read, {checklist.title}: {counts.checked_steps} of {counts.total_steps} steps checked "
              f"in {summary.total_seconds:.0f} s.")]
    lines.append(f"- Both saw: {_ids([b.ai_finding_id for b in summary.both])}")
    lines.append("- AI only: " + (", ".join(f"{a.finding_id} ({a.reason})" for a in summary.ai_only) or "none"))
    lines.append("- Clinician only: " + (", ".join(
        f"{c.finding_id} ({c.label}; {c.verification.split(' (')[0]})" for c in summary.clinician_only) or "none"))
    lines.append("- Disagreements: " + ("; ".join(
        f"step {d.step_number} {d.title}" + (f" — \"{d.note}\"" if d.note else "") for d in summary.disagreements)
        or "none"))
    lines.append(f"- Unchecked steps: {_titles(summary, summary.unchecked) or 'none'}")
    return "\n".join(lines)


def _ids(ids: list[str]) -> str:
    return ", ".join(ids) or "none"


def _titles(summary: Concordance, step_ids: list[str]) -> str:
    """The steps as the clinician saw them ("step 5 Lungs: lower zones, right against left"), not
    their checklist ids ("lower_zones"); "; " between them, as titles hold commas."""
    steps = {step.step_id: step for step in summary.steps}
    return "; ".join(f"step {steps[i].number} {steps[i].title}" if i in steps else i for i in step_ids)


def addendum_lines(summary: Concordance) -> list[str]:
    """The addendum as report items (one line each)."""
    counts = summary.counts
    checklist = load_checklists()[summary.checklist_id]
    lines = [(f"{ADDENDUM_PREFIX}, {checklist.title}: {counts.checked_steps} of {counts.total_steps} steps checked; "
              f"both saw {_ids([b.ai_finding_id for b in summary.both])}; AI only "
              f"{_ids([a.finding_id for a in summary.ai_only])}; clinician only "
              f"{_ids([c.finding_id for c in summary.clinician_only])}.")]
    lines += [f"{ADDENDUM_PREFIX}: disagreement on {d.title.lower()}" + (f": {_one_line(d.note)}" if d.note else "") + "."
              for d in summary.disagreements]
    if summary.unchecked:
        lines.append(f"{ADDENDUM_PREFIX}: not checked — {_titles(summary, summary.unchecked)}.")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _findings_named_in_disagreements(ctx: ToolContext, study: Study, summary: Concordance,
                                     listed: set[str]) -> list[AddFinding]:
    """A finding of this study that a disagreement's note names ("F3 is a real nodule") and the
    report does not list: added with the reader's words, so their disagreement reaches the Findings."""
    edits = []
    for item in summary.disagreements:
        for number in dict.fromkeys(_FINDING_ID.findall(item.note)):
            finding = ctx.findings.get(f"F{number}")
            if finding is None or finding.study_id != study.id or finding.id in listed:
                continue
            listed.add(finding.id)
            edits.append(AddFinding(finding_id=finding.id,
                                    characteristics=f"{finding.label}; the reader at second read: {_one_line(item.note)}"))
    return edits


def append_to_report(ctx: ToolContext, study: Study, summary: Concordance, *, author_name: str | None = None) -> int:
    """Add the summary to the study's report as a clinician's addendum: a new version with the
    clinician-only findings added to the findings and the addendum lines at the end of the
    limitations (replacing an earlier second-read addendum); a finding a disagreement's note names
    is added too, with the note. Drafts a report first if there is none. Returns the version
    number (the current one when nothing changed)."""
    if not ctx.reports.get(study.id) or not ctx.reports[study.id].versions:
        draft_report(ctx, DraftReportInput(study_id=study.id))
    current = ctx.reports[study.id].current
    listed = {f.finding_id for f in current.findings}
    edits: list = [AddFinding(finding_id=c.finding_id, characteristics=f"{c.label}; marked by the clinician at second read")
                   for c in summary.clinician_only if c.finding_id not in listed]
    listed |= {c.finding_id for c in summary.clinician_only}
    edits += _findings_named_in_disagreements(ctx, study, summary, listed)
    kept = [item for item in current.limitations if not item.startswith(ADDENDUM_PREFIX)]
    edits.append(SetSection(section="limitations", text="\n".join([*kept, *addendum_lines(summary)])))
    output = revise(ctx, edits, author="clinician", reason="second-read addendum", study_id=study.id,
                    author_name=author_name)
    return output.version
