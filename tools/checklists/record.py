"""The record of a second read: which checklist, each step's answer, note and time, and where
the clinician marked findings. Plain JSON (``model_dump(mode="json")``), so the session stores it
and a paused read resumes after a reload (``second_reads_json`` / ``restore_second_reads``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from tools.checklists.catalogue import Checklist, checklist_for

Assessment = Literal["agree", "disagree", "uncertain"]


class StepRecord(BaseModel):
    """What happened on one checklist step."""

    step_id: str
    assessment: Assessment | None = None
    note: str = ""
    started_at: datetime | None = Field(default=None, description="When the step was first shown.")
    answered_at: datetime | None = None
    seconds: float = Field(default=0.0, ge=0, description="Time the step was on screen (visits capped).")
    shown_at: datetime | None = Field(default=None, description="Start of the current visit, if on screen.")
    clinician_finding_ids: list[str] = Field(default_factory=list)


class ClinicianMarkRecord(BaseModel):
    """Where the clinician put a finding, before verification refined it (nothing is lost)."""

    finding_id: str
    marked_box_px: list[float]
    step_id: str | None = Field(default=None, description="None for a finding entered before the read.")


class SecondReadState(BaseModel):
    """A second read in progress or finished; JSON-serialisable (``model_dump(mode="json")``)."""

    study_id: str
    checklist_id: str
    checklist_version: str = ""
    frame: int = Field(ge=0)
    current: int = Field(default=0, ge=0, description="0-based index of the step on screen.")
    steps: list[StepRecord]
    pre_read_note: str = ""
    pre_read_finding_ids: list[str] = Field(default_factory=list)
    marks: list[ClinicianMarkRecord] = Field(default_factory=list)
    started_at: datetime
    summarised_at: datetime | None = None

    @property
    def checklist(self) -> Checklist:
        return checklist_for(None, self.checklist_id)

    def clinician_finding_ids(self) -> list[str]:
        return [*self.pre_read_finding_ids, *(i for r in self.steps for i in r.clinician_finding_ids)]

    def checked(self) -> int:
        return sum(r.assessment is not None for r in self.steps)


class HoldsSecondReads(Protocol):
    """What keeps a session's second reads, by study id (``tools.context.ToolContext`` does)."""

    second_reads: dict[str, SecondReadState]


def second_reads_json(ctx: HoldsSecondReads) -> dict[str, dict]:
    """Every second read of the session as JSON (for the session store)."""
    return {study_id: state.model_dump(mode="json") for study_id, state in ctx.second_reads.items()}


def restore_second_reads(ctx: HoldsSecondReads, data: dict[str, dict]) -> None:
    """Put stored second reads back. The step on screen when the session was stored is not
    counted as read while the session was closed: its visit ends at the pause."""
    for study_id, raw in data.items():
        state = SecondReadState.model_validate(raw)
        for record in state.steps:
            record.shown_at = None
        ctx.second_reads[study_id] = state
