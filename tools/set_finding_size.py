"""set_finding_size: the clinician's own measurement of a finding, which the report then states.

The clinician gives the long axis and the short axis perpendicular to it either as numbers in
mm ("F26 is 20 × 12 mm") or as the caliper lines drawn on the finding's frame (native pixel
coordinates), which are measured with the study's pixel spacing (in px without one). The size
replaces the tools' on the finding (``size_method`` "clinician"; the Gaussian fit, its centre
and uncertainty are kept), later fits leave it alone, and when the current report lists the
finding, a new version states it, by the clinician.

Only the clinician's own numbers belong here: a model relays what the clinician said or drew,
never a size of its own (sizes in a report come from the tools or the clinician).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, model_validator

from tools.context import ToolContext, ToolResult
from tools.errors import InvalidCoordinatesError
from tools.findings import CaliperLine, Finding, SizeAxes
from tools.report.document import EditFinding, Measurement
from tools.revise_report import revise
from tools.study import Study

#: No lesion is longer than this (mm): a larger number is a typing slip.
MAX_SIZE_MM = 1000.0


class SetFindingSizeInput(BaseModel):
    """Arguments of ``set_finding_size``: the size in mm, or the caliper lines as drawn."""

    finding_id: str = Field(description="The finding the clinician measured, e.g. 'F2'.")
    long_axis_mm: float | None = Field(default=None, gt=0, le=MAX_SIZE_MM,
                                       description="The long axis the clinician stated, in mm.")
    short_axis_mm: float | None = Field(default=None, gt=0, le=MAX_SIZE_MM,
                                        description="The short axis (perpendicular to the long one) in mm.")
    # Plain lists, as every tool takes coordinates: a tuple's JSON Schema (prefixItems) is beyond
    # some model APIs' subset.
    long_axis_line: list[float] | None = Field(
        default=None, min_length=4, max_length=4,
        description="The long axis as drawn: [x0, y0, x1, y1] in native pixels of the finding's frame.")
    short_axis_line: list[float] | None = Field(
        default=None, min_length=4, max_length=4, description="The short axis as drawn: [x0, y0, x1, y1], likewise.")
    study_id: str | None = Field(default=None, description="Which open study; default the current one.")

    @model_validator(mode="after")
    def _one_complete_form(self) -> SetFindingSizeInput:
        typed = (self.long_axis_mm, self.short_axis_mm)
        drawn = (self.long_axis_line, self.short_axis_line)
        if any(v is not None for v in typed) and any(v is not None for v in drawn):
            raise ValueError("give the size either in mm or as caliper lines, not both")
        if not (all(v is not None for v in typed) or all(v is not None for v in drawn)):
            raise ValueError("give both axes: long_axis_mm and short_axis_mm, or long_axis_line and "
                             "short_axis_line (a finding's size has a long and a short axis)")
        return self


class SetFindingSizeOutput(BaseModel):
    """What ``set_finding_size`` did."""

    study_id: str
    finding_id: str
    size_mm: tuple[float, float] | None = Field(description="Long and short axis in mm (None: no pixel spacing).")
    size_px: tuple[float, float] | None = Field(description="Long and short axis in px, for drawn calipers.")
    report_version: int | None = Field(
        default=None, description="The report version that now states the clinician's size, when the report lists it.")
    message: str


def set_finding_size(ctx: ToolContext, args: SetFindingSizeInput) -> ToolResult:
    """Set a finding's size to the clinician's own measurement (long and short axis in mm, or
    the caliper lines they drew on the image); the report then states it as the clinician's.

    Use only for a size the clinician stated or drew, never for a size of your own. Lines are
    [x0, y0, x1, y1] in native pixels of the finding's frame and are measured with the study's
    pixel spacing (in px without one).

    Raises
    ------
    NoStudyOpenError
        No study is open, or ``study_id`` is unknown.
    InvalidCoordinatesError
        An unknown finding, a finding of another study, or a line off the image.
    """
    study = ctx.view(args.study_id).study
    finding = _finding(ctx, study.id, args.finding_id)
    if args.long_axis_mm is not None and args.short_axis_mm is not None:
        long_mm, short_mm = sorted((args.long_axis_mm, args.short_axis_mm), reverse=True)
        size_mm, size_px, axes = (long_mm, short_mm), None, None
    else:
        size_mm, size_px, axes = _drawn(study, finding, _line(args.long_axis_line), _line(args.short_axis_line))
    ctx.findings[finding.id] = finding.model_copy(update={
        "size_mm": size_mm, "size_px": size_px, "size_method": "clinician", "size_axes": axes})
    size = size_mm or size_px
    unit = "mm" if size_mm is not None else "px"
    version = _report_states(ctx, study, finding.id, Measurement(major=size[0], minor=size[1], unit=unit,
                                                                 source="clinician"))
    digits = 1 if unit == "mm" else 0
    message = f"{finding.id} measures {size[0]:.{digits}f} × {size[1]:.{digits}f} {unit}, as the clinician measured it"
    message += f"; report version {version} states it." if version is not None else "."
    return ToolResult(output=SetFindingSizeOutput(study_id=study.id, finding_id=finding.id, size_mm=size_mm,
                                                  size_px=size_px, report_version=version, message=message))


def _finding(ctx: ToolContext, study_id: str, finding_id: str) -> Finding:
    wanted = finding_id.strip().upper()
    # An id of another study (or retired) is named as such, never substituted by another finding.
    if (elsewhere := ctx.finding_not_here(wanted, study_id)) is not None:
        raise InvalidCoordinatesError(elsewhere)
    return ctx.findings[wanted]


def _drawn(study: Study, finding: Finding, long_line: CaliperLine, short_line: CaliperLine
           ) -> tuple[tuple[float, float] | None, tuple[float, float], SizeAxes]:
    """Sizes (mm or None, px) and axes of two drawn lines, the longer one first."""
    for line in (long_line, short_line):
        _check_on_image(study, line)
    spacing = study.pixel_spacing_mm(finding.frame)
    lines = sorted((long_line, short_line), key=lambda line: line_length(line, spacing), reverse=True)
    px = (line_length(lines[0], None), line_length(lines[1], None))
    if px[1] <= 0:
        raise InvalidCoordinatesError("A caliper line has both ends on the same point; draw it across the lesion.")
    mm = None if spacing is None else (line_length(lines[0], spacing), line_length(lines[1], spacing))
    return mm, px, SizeAxes(long_axis=lines[0], short_axis=lines[1])


def _line(values: list[float]) -> CaliperLine:
    x0, y0, x1, y1 = (float(v) for v in values)
    return (x0, y0), (x1, y1)


def _check_on_image(study: Study, line: CaliperLine) -> None:
    columns, rows = study.safe.columns, study.safe.rows
    for x, y in line:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidCoordinatesError("A caliper line has an end that is not a finite number.")
        if not (-0.5 <= x <= columns - 0.5 and -0.5 <= y <= rows - 0.5):
            raise InvalidCoordinatesError(f"The caliper end ({x:g}, {y:g}) lies outside the {columns} x {rows} "
                                          "pixel image.")


def line_length(line: CaliperLine, spacing_mm: tuple[float, float] | None) -> float:
    """The line's length in mm with ``spacing_mm`` (row, column), else in px."""
    (x0, y0), (x1, y1) = line
    row_mm, column_mm = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    return math.hypot((x1 - x0) * column_mm, (y1 - y0) * row_mm)


def _report_states(ctx: ToolContext, study: Study, finding_id: str, size: Measurement) -> int | None:
    """A new report version with the clinician's size when the current one lists the finding;
    its number, or None when there is no report or it does not list the finding."""
    history = ctx.reports.get(study.id)
    if history is None or not history.versions:
        return None
    if all(listed.finding_id != finding_id for listed in history.current.findings):
        return None
    output = revise(ctx, [EditFinding(finding_id=finding_id, size=size)], author="clinician",
                    reason=f"the clinician measured {finding_id}", study_id=study.id)
    return output.version
