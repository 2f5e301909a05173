"""render_overlay: layered figures of the shown frame and its findings, as PNG artifacts.

The layers ("image", "annotated", "heatmap", "comparison", "crops", "statistics") are drawn by
one module each in ``tools.render``, on the figure style of ``tools.render.style``; this module
is the tool: it picks the findings, draws the layers asked for and describes them. Its
``__all__`` is the public surface of rendering (the layers' renderers are re-exported here).
Coordinates follow ``tools.coordinates``: x = column, y = row, the centre of the top-left pixel
at (0, 0), boxes inclusive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.context import Artifact, ToolContext, ToolResult
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding
from tools.render.annotated import annotated_figure, render_annotated, render_image
from tools.render.comparison import render_comparison
from tools.render.crops import crop_bounds, render_crop
from tools.render.geometry import LesionShape, Spacing, lesion_masks, lesion_shape, scale_bar_mm, size_text, status_of
from tools.render.heatmap import probability_map, render_heatmap
from tools.render.statistics import LineProfile, line_profile, render_statistics
from tools.render.style import (DPI, SOURCE_COLOUR_WORDS, SOURCE_COLOURS, SOURCE_NAMES, STATUS_LINES,
                                clear_text_cache, figure_png, figure_theme)
from tools.study.orientation import Orientation, direction_letters, orientation_labels

__all__ = [
    "DPI", "SOURCE_COLOURS", "STATUS_LINES", "Layer", "LesionShape", "LineProfile", "RenderOverlayInput",
    "RenderOverlayOutput",
    "annotated_figure", "clear_text_cache", "crop_bounds", "direction_letters", "figure_png", "lesion_masks",
    "lesion_shape", "line_profile", "orientation_labels", "probability_map", "render_annotated", "render_comparison",
    "render_crop", "render_heatmap", "render_image", "render_overlay", "render_statistics", "scale_bar_mm",
    "size_text", "status_of",
]

Layer = Literal["image", "annotated", "heatmap", "comparison", "crops", "statistics"]


class RenderOverlayInput(BaseModel):
    """Arguments of ``render_overlay``."""

    layers: list[Layer] = Field(
        default_factory=lambda: ["annotated"], min_length=1,
        description=(
            "Which figures to draw: 'image' (display image alone), 'annotated' (findings drawn with "
            "ids, sizes, scale bar, orientation), 'heatmap' (probability map), 'comparison' "
            "(original beside annotated), 'crops' (one zoomed crop per finding), 'statistics' "
            "(histogram and profile per finding). Default: ['annotated']."
        ),
    )
    finding_ids: list[str] | None = Field(
        default=None,
        description="Finding ids to draw, e.g. ['F1', 'F3']; default: all findings on the shown frame.",
    )
    study_id: str | None = Field(default=None, description="Which open study; default: the current one.")


class RenderOverlayOutput(BaseModel):
    """What ``render_overlay`` drew."""

    study_id: str
    frame: int = Field(description="Frame drawn (0-based).")
    layers: list[Layer] = Field(description="Layers that produced at least one image.")
    artifacts: list[str] = Field(description="Names of the PNG artifacts, in order.")
    finding_ids: list[str] = Field(description="Findings drawn.")
    summary: str = Field(description="One or two sentences on what was drawn.")


@dataclass
class _Scene:
    """Everything the layers need, gathered once per call."""

    display: np.ndarray
    physical: Callable[[], np.ndarray]
    findings: list[Finding]
    spacing_mm: Spacing
    orientation: Orientation
    unit: str
    title: str
    where: str  # 'frame 3 of CT' for captions


def _id_number(finding: Finding) -> int:
    return int(finding.id[1:])


def _select_findings(study_findings: list[Finding], frame: int, ids: list[str] | None) -> list[Finding]:
    """Findings on ``frame`` (and among ``ids`` when given), ordered F1, F2, ..."""
    by_id = {f.id: f for f in study_findings}
    if ids is None:
        return sorted((f for f in study_findings if f.frame == frame), key=_id_number)
    for finding_id in ids:
        if finding_id not in by_id:
            known = ", ".join(f.id for f in sorted(study_findings, key=_id_number)) or "none"
            raise InvalidCoordinatesError(
                f"There is no finding '{finding_id}' on this study (known findings: {known})."
            )
        if by_id[finding_id].frame != frame:
            other = by_id[finding_id].frame
            raise InvalidCoordinatesError(
                f"Finding {finding_id} is on frame index {other}, but frame index {frame} is shown; "
                f"show it first with load_study (frame={other})."
            )
    return sorted({by_id[i].id: by_id[i] for i in ids}.values(), key=_id_number)


def _describe(finding: Finding, spacing_mm: Spacing) -> str:
    size = size_text(finding, spacing_mm)
    return f"{finding.id} ({status_of(finding)}{', ' + size if size else ''})"


def _colour_key(findings: Sequence[Finding]) -> str:
    """The outline scheme in words, for what is drawn: "yellow = detector; dashed = rejected"."""
    sources = [s for s in SOURCE_COLOURS if any(f.source == s for f in findings)]
    lines = [s for s in ("rejected", "unverified") if any(status_of(f) == s for f in findings)]
    return "; ".join([*(f"{SOURCE_COLOUR_WORDS[s]} = {SOURCE_NAMES[s]}" for s in sources),
                      *(f"{STATUS_LINES[s]} = {s}" for s in lines)])


def _layer_image(scene: _Scene) -> list[Artifact]:
    return [Artifact(name="overlay-image.png", data=render_image(scene.display),
                     caption=f"Display image, {scene.where}.")]


def _layer_annotated(scene: _Scene) -> list[Artifact]:
    data = render_annotated(scene.display, scene.findings, spacing_mm=scene.spacing_mm,
                            orientation=scene.orientation, title=scene.title)
    if scene.findings:
        marked = ", ".join(_describe(f, scene.spacing_mm) for f in scene.findings)
        caption = f"Findings on {scene.where}: {marked}. Colours: {_colour_key(scene.findings)}."
    else:
        caption = f"Nothing is marked on {scene.where}; the image shows scale and orientation only."
    return [Artifact(name="overlay-annotated.png", data=data, caption=caption, for_model=True)]


def _layer_heatmap(scene: _Scene) -> list[Artifact]:
    probability = probability_map(scene.display.shape[:2], scene.findings)
    data = render_heatmap(scene.display, probability, scene.findings, title=scene.title)
    return [Artifact(name="overlay-heatmap.png", data=data,
                     caption=("Probability map from the findings' Gaussian fits (boxes without a fit), "
                              f"weighted by confidence, on {scene.where}."))]


def _layer_comparison(scene: _Scene) -> list[Artifact]:
    data = render_comparison(scene.display, scene.findings, spacing_mm=scene.spacing_mm,
                             orientation=scene.orientation, title=scene.title)
    return [Artifact(name="overlay-comparison.png", data=data,
                     caption=f"Original (left) and annotated (right), {scene.where}.")]


def _layer_crops(scene: _Scene) -> list[Artifact]:
    return [Artifact(name=f"overlay-crop-{f.id}.png",
                     data=render_crop(scene.display, f, scene.findings, spacing_mm=scene.spacing_mm,
                                      orientation=scene.orientation),
                     caption=f"Zoomed crop of {_describe(f, scene.spacing_mm)}.")
            for f in scene.findings]


def _layer_statistics(scene: _Scene) -> list[Artifact]:
    physical = scene.physical() if scene.findings else None
    artifacts = []
    for finding in scene.findings:
        fit = " with its Gaussian fit and residuals" if lesion_shape(finding).ellipse else ""
        artifacts.append(Artifact(
            name=f"overlay-stats-{finding.id}.png",
            data=render_statistics(physical, finding, spacing_mm=scene.spacing_mm, unit=scene.unit),
            caption=f"{finding.id}: {scene.unit} inside vs around the lesion and the profile "
                    f"through it{fit}."))
    return artifacts


_LAYERS: dict[str, Callable[[_Scene], list[Artifact]]] = {
    "image": _layer_image, "annotated": _layer_annotated, "heatmap": _layer_heatmap,
    "comparison": _layer_comparison, "crops": _layer_crops, "statistics": _layer_statistics,
}


def render_overlay(ctx: ToolContext, args: RenderOverlayInput) -> ToolResult:
    """Draw the shown frame with its findings: ellipses or boxes coloured by source (yellow
    detector, cyan vision model, green trained model, magenta clinician; dashed when rejected,
    dotted when unverified), id labels, calipers with sizes, a scale bar and orientation
    letters; optionally a probability heatmap, an original-vs-annotated comparison, and a zoomed
    crop and a statistics panel (histogram, profile, Gaussian fit) per finding.

    Only the annotated image is sent back to the model; the others are shown to the clinician.
    Findings default to all of the current study's findings on the shown frame.

    Raises
    ------
    InvalidCoordinatesError
        A requested finding id does not exist on this study or is on another frame.
    """
    view = ctx.view(args.study_id)
    study = view.study
    for finding_id in args.finding_ids or ():  # an id of another study is named as such, never substituted
        if (elsewhere := ctx.finding_not_here(finding_id, study.id)) is not None:
            raise InvalidCoordinatesError(elsewhere)
    findings = _select_findings(ctx.study_findings(study.id), view.frame, args.finding_ids)
    rendered = study.render(view.frame, view.window)
    name = study.modality or "image"
    window = f" · window {rendered.window.center:g}/{rendered.window.width:g}" if rendered.window else ""
    scene = _Scene(
        display=rendered.pixels,
        physical=lambda: study.physical(view.frame),
        findings=findings,
        spacing_mm=study.pixel_spacing_mm(view.frame),
        orientation=study.geometry(view.frame).orientation,
        unit="HU" if study.modality == "CT" else "intensity",
        title=f"{name} · frame {view.frame + 1} of {study.frame_count}{window}",
        where=f"frame {view.frame + 1} of {name}",
    )
    artifacts, layers = [], []
    with figure_theme(ctx.figure_theme):  # the page's theme (see ToolContext.figure_theme)
        for layer in dict.fromkeys(args.layers):
            produced = _LAYERS[layer](scene)
            artifacts += produced
            layers += [layer] if produced else []
    drawn = [f.id for f in findings]
    summary = (f"Drew {', '.join(layers) or 'nothing'} for {', '.join(drawn)} on {scene.where}." if drawn else
               f"Nothing is marked on {scene.where}; drew {', '.join(layers) or 'nothing'}.")
    output = RenderOverlayOutput(study_id=study.id, frame=view.frame, layers=layers,
                                 artifacts=[a.name for a in artifacts], finding_ids=drawn, summary=summary)
    return ToolResult(output=output, artifacts=artifacts)
