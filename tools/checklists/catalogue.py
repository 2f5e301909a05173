"""Second-read checklists: one per modality and body region, as validated data.

The checklists are TOML files in ``prompts/checklists/`` (chest radiograph, CT chest, brain MR,
breast ultrasound, and a generic fallback), written in the order radiologists are taught to
read. Each step names its image region, its window and what to look for; ultrasound steps also
carry the BI-RADS lexicon terms to choose from.

A step's region is a box ``[ymin, xmin, ymax, xmax]`` in 0–1000 of the frame (the same
normalised convention as ``box_2d``, relative to the native frame), an anatomical mask the
tools compute on the frame (``lungs``, ``brain``, ``sector``, ``body``; see
``tools.detection.working``), or both — the mask inside the box. ``resolve_region`` turns it
into native-pixel bounds and a membership test for one frame of an open study.

Validation happens on load, with the checklist and step named in the message: boxes inside the
frame and ordered, windows that exist for every modality the checklist serves, masks that the
tools compute for that modality, unique step ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy import ndimage as ndi

from prompts import load_prompt, load_table
from tools.coordinates import NORMALISED, BoxPx, SentImage, box_2d_to_px
from tools.detection.working import WorkingImage
from tools.errors import LoupeError
from tools.study.windowing import presets_for

MaskName = Literal["lungs", "brain", "sector", "body"]

#: The organ mask ``tools.detection.working.prepare`` computes for each modality; every
#: modality also has "body" (the imaged body or field).
ORGAN_MASK: dict[str, MaskName] = {"CT": "lungs", "DX": "lungs", "CR": "lungs", "DR": "lungs", "RG": "lungs",
                                   "MR": "brain", "US": "sector"}
DEFAULT_WINDOW = "default"
FALLBACK_CHECKLIST = "generic"
_FOLDER = "checklists"
#: Findings within this many working px of a mask's edge count as inside it: lesions at the
#: pleura or the brain surface indent the coarse masks.
_MASK_MARGIN = 3


class ChecklistError(LoupeError):
    """A checklist file that does not validate, or a checklist that does not exist."""


class Region(BaseModel):
    """Where a step looks: a normalised box, a named mask, or the mask inside the box."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    box: list[float] | None = Field(default=None, description="[ymin, xmin, ymax, xmax], 0–1000 of the frame.")
    mask: MaskName | None = None

    @field_validator("box")
    @classmethod
    def _box_inside_frame(cls, box: list[float] | None) -> list[float] | None:
        if box is None:
            return None
        if len(box) != 4:
            raise ValueError(f"a box has four numbers [ymin, xmin, ymax, xmax], got {box}")
        if any(not math.isfinite(v) or v < 0 or v > NORMALISED for v in box):
            raise ValueError(f"box {box} leaves the frame (each value must be within 0–1000)")
        ymin, xmin, ymax, xmax = box
        if not (ymin < ymax and xmin < xmax):
            raise ValueError(f"box {box} is empty or out of order (needs ymin < ymax and xmin < xmax)")
        return box

    @model_validator(mode="after")
    def _something(self) -> Region:
        if self.box is None and self.mask is None:
            raise ValueError("a region needs a box, a mask, or both")
        return self


class ChecklistStep(BaseModel):
    """One step of a checklist."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str = Field(min_length=3)
    region: Region
    window: str = DEFAULT_WINDOW
    look_for: list[str] = Field(min_length=1)
    lexicon: dict[str, list[str]] = Field(default_factory=dict, description="BI-RADS (or other) terms by descriptor.")
    #: False: Loupe's detector does not assess what this step is about (lines, bones, labels).
    focal: bool = True
    #: "findings": the crop zooms on the step's findings (a lesion's descriptors), else the region.
    zoom: Literal["region", "findings"] = "region"


class Checklist(BaseModel):
    """A whole checklist: which modalities it serves and its ordered steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str
    modalities: list[str] = Field(description="DICOM modality codes served; empty for the generic fallback.")
    body_parts: list[str] = Field(default_factory=list, description=(
        "BodyPartExamined codes served; empty = any. A study whose body part is not coded is served too "
        "(PNG/JPEG images have none), but an abdominal MR does not get the brain checklist."))
    steps: list[ChecklistStep] = Field(min_length=1)
    version: str = Field(default="", description="Content hash of the file, for the audit trail.")

    @model_validator(mode="after")
    def _consistent(self) -> Checklist:
        ids = [step.id for step in self.steps]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"step ids must be unique; repeated: {', '.join(duplicates)}")
        for modality in self.modalities or [""]:
            for step in self.steps:
                _check_step_for(step, modality)
        return self

    def step(self, key: int | str) -> tuple[int, ChecklistStep]:
        """(0-based index, step) by 1-based number or step id."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            number = int(key)
            if not 1 <= number <= len(self.steps):
                raise ChecklistError(f"There is no step {number}; this checklist has steps 1 to {len(self.steps)}.")
            return number - 1, self.steps[number - 1]
        for index, step in enumerate(self.steps):
            if step.id == key:
                return index, step
        raise ChecklistError(f"There is no step '{key}'; steps: {', '.join(s.id for s in self.steps)}.")


def _check_step_for(step: ChecklistStep, modality: str) -> None:
    """A step's window and mask must exist for ``modality`` ('' = any image)."""
    windows = {DEFAULT_WINDOW, *presets_for(modality)}
    if step.window not in windows:
        raise ValueError(f"step '{step.id}': window '{step.window}' does not exist for {modality or 'any image'} "
                         f"(available: {', '.join(sorted(windows))})")
    masks = {"body", *([ORGAN_MASK[modality]] if modality in ORGAN_MASK else [])}
    if step.region.mask is not None and step.region.mask not in masks:
        raise ValueError(f"step '{step.id}': the tools compute no '{step.region.mask}' mask for "
                         f"{modality or 'any image'} (available: {', '.join(sorted(masks))})")


# -- loading ---------------------------------------------------------------------------------------
def checklist_files() -> list[str]:
    """Names of the checklist files shipped in ``prompts/checklists/``."""
    folder = resources.files("prompts").joinpath(_FOLDER)
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".toml"))


def load_checklist_file(name: str) -> Checklist:
    """Load and validate one checklist file (a ChecklistError naming the file if it is invalid)."""
    path = f"{_FOLDER}/{name}"
    try:
        return Checklist.model_validate({**load_table(path), "version": load_prompt(path).version})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg']}" for issue in error.errors())
        raise ChecklistError(f"The checklist {name} is invalid: {problems}.") from error


@cache
def load_checklists() -> dict[str, Checklist]:
    """Every shipped checklist by id (validated)."""
    checklists = [load_checklist_file(name) for name in checklist_files()]
    return {checklist.id: checklist for checklist in checklists}


def checklist_for(modality: str | None, checklist_id: str | None = None, body_part: str | None = None) -> Checklist:
    """The checklist named ``checklist_id``, else the one serving ``modality`` (and ``body_part``,
    when the study codes one), else the generic one."""
    checklists = load_checklists()
    if checklist_id is not None:
        if checklist_id not in checklists:
            raise ChecklistError(f"There is no checklist '{checklist_id}'; available: {', '.join(sorted(checklists))}.")
        return checklists[checklist_id]
    code, part = (modality or "").upper(), (body_part or "").upper()
    serving = (c for c in checklists.values()
               if code in c.modalities and (not part or not c.body_parts or part in c.body_parts))
    return next(serving, checklists[FALLBACK_CHECKLIST])


# -- regions on a frame ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedRegion:
    """A step's region on one frame: native-pixel bounds and a membership test."""

    bounds: BoxPx
    contains: Callable[[float, float], bool]
    area_fraction: float  # of the frame, to rank regions from specific to general
    note: str = ""  # e.g. that the organ mask was not available and the body was used


def resolve_region(region: Region, work: WorkingImage) -> ResolvedRegion:
    """The region on the frame ``work`` was prepared from (native px, x = column, y = row)."""
    return resolve_regions([region], work)[0]


def resolve_regions(regions: Sequence[Region], work: WorkingImage) -> list[ResolvedRegion]:
    """Several regions on one frame; each named mask is prepared once for all of them."""
    masks: dict[str | None, tuple[np.ndarray | None, np.ndarray | None, str]] = {}
    resolved = []
    for region in regions:
        if region.mask not in masks:
            mask, note = _mask(region.mask, work)
            grown = None if mask is None else ndi.binary_dilation(mask, iterations=_MASK_MARGIN)
            masks[region.mask] = (mask, grown, note)
        resolved.append(_resolve(region, work, *masks[region.mask]))
    return resolved


def _resolve(region: Region, work: WorkingImage, mask: np.ndarray | None, grown: np.ndarray | None,
             note: str) -> ResolvedRegion:
    rows, cols = work.native_shape
    box = box_2d_to_px(region.box, SentImage.identity(cols, rows)) if region.box is not None else None
    if mask is None:
        return ResolvedRegion(box, box.contains, box.width * box.height / (rows * cols), note)
    if box is not None:
        inside = _box_mask(box, work)
        mask, grown = mask & inside, grown & inside
        if not mask.any():  # the organ does not reach into the box on this frame: use the box
            return ResolvedRegion(box, box.contains, box.width * box.height / (rows * cols),
                                  f"the {region.mask} mask does not reach into this box on this frame")
    return ResolvedRegion(_mask_bounds(mask, work), _membership(grown, work), float(mask.mean()), note)


def _mask(name: MaskName | None, work: WorkingImage) -> tuple[np.ndarray | None, str]:
    if name is None:
        return None, ""
    if name == "body":
        return work.body, ""
    if work.organ == name:
        return work.search, ""
    # The organ mask failed on this frame (working.prepare fell back to the body): say so.
    return work.body, f"no {name} mask on this frame; the whole {'field' if work.organ == 'sector' else 'body'} is used"


def _box_mask(box: BoxPx, work: WorkingImage) -> np.ndarray:
    rows, cols = work.image.shape
    x0, y0 = work.to_working(box.x0, box.y0)
    x1, y1 = work.to_working(box.x1, box.y1)
    inside = np.zeros((rows, cols), dtype=bool)
    inside[max(0, math.floor(y0)):min(rows, math.ceil(y1) + 1), max(0, math.floor(x0)):min(cols, math.ceil(x1) + 1)] = True
    return inside


def _mask_bounds(mask: np.ndarray, work: WorkingImage) -> BoxPx:
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    rows, cols = work.native_shape
    x0, y0 = work.to_native(float(xs[0]) - 0.5, float(ys[0]) - 0.5)
    x1, y1 = work.to_native(float(xs[-1]) + 0.5, float(ys[-1]) + 0.5)
    return BoxPx(x0=x0, y0=y0, x1=x1, y1=y1).clipped(cols, rows)


def _membership(grown: np.ndarray, work: WorkingImage) -> Callable[[float, float], bool]:
    """Inside the (slightly grown) mask, by the working pixel nearest to a native point."""
    rows, cols = grown.shape

    def contains(x: float, y: float) -> bool:
        wx, wy = work.to_working(x, y)
        return bool(grown[min(max(round(wy), 0), rows - 1), min(max(round(wx), 0), cols - 1)])

    return contains
