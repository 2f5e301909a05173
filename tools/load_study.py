"""load_study: open a study (or change the frame / window of the open one) and show it.

Input, output and function live together; the registry turns ``LoadStudyInput`` into the
model-facing declaration.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from tools.context import Artifact, ToolContext, ToolResult
from tools.render.png import encode_png
from tools.study import SafeMetadata, Window, open_study


class LoadStudyInput(BaseModel):
    """Arguments of ``load_study``."""

    path: str | list[str] | None = Field(
        default=None,
        description=(
            "File, folder or .zip to open (DICOM, PNG or JPEG), or a list of files of one series. "
            "Omit to keep the current study and only change frame or window."
        ),
    )
    study_id: str | None = Field(
        default=None, description="Which open study to act on when path is omitted; default: current."
    )
    modality: str | None = Field(
        default=None,
        description="Modality of a PNG/JPEG image (CT, MR, CR, DX, US); ignored for DICOM.",
    )
    frame: int | None = Field(
        default=None, ge=0, description="Frame (slice) index to show, from 0; default: keep / first."
    )
    window: str | None = Field(
        default=None,
        description=(
            "Display window: a preset (CT: lung, soft_tissue, brain, bone), 'default' for the "
            "study's own, or 'centre,width' in the study's units, e.g. '-600,1500'."
        ),
    )


class LoadStudyOutput(BaseModel):
    """What ``load_study`` reports: safe metadata and the view now shown."""

    study_id: str
    summary: SafeMetadata
    frame: int = Field(description="Frame now shown (0-based).")
    window: Window | None = Field(description="Window used for the display image; None for colour or VOI LUT.")
    window_presets: list[str] = Field(description="Preset names available for this study.")
    pixel_spacing_mm: tuple[float, float] | None = Field(
        description="[row, column] spacing of the shown frame in mm, or None (measure in px)."
    )
    physical_range: tuple[float, float] = Field(
        description="Minimum and maximum physical value of the shown frame (HU for CT)."
    )


def load_study(ctx: ToolContext, args: LoadStudyInput) -> ToolResult:
    """Open a DICOM or PNG/JPEG study, or change the frame or window of an open one.

    Returns safe technical metadata and the display image of the current frame.
    """
    if args.path is not None:
        paths = [args.path] if isinstance(args.path, str) else args.path
        checked = [ctx.check_path(Path(p)) for p in paths]
        study = open_study(checked if len(checked) > 1 else checked[0], limits=ctx.limits,
                           modality=args.modality)
        view = ctx.add_study(study, source=checked[0] if len(checked) == 1 else None)
    else:
        view = ctx.view(args.study_id)
    study = view.study
    if args.frame is not None:
        view.frame = study.check_frame(args.frame)
    if args.window is not None:
        view.window = None if args.window.strip().lower() in ("default", "auto") else study.resolve_window(args.window)
    rendered = study.render(view.frame, view.window)
    physical = study.physical(view.frame)
    output = LoadStudyOutput(
        study_id=study.id,
        summary=study.safe,
        frame=view.frame,
        window=rendered.window,
        window_presets=sorted(study.window_presets()),
        pixel_spacing_mm=study.pixel_spacing_mm(view.frame),
        physical_range=(float(physical.min()), float(physical.max())),
    )
    caption = f"{study.modality or 'Image'}, frame {view.frame + 1} of {study.frame_count}"
    if rendered.window is not None:
        caption += f", window {rendered.window.center:g}/{rendered.window.width:g}"
    artifact = Artifact(name=f"display-frame{view.frame}.png", data=encode_png(rendered.pixels),
                        caption=caption, for_model=True)
    return ToolResult(output=output, artifacts=[artifact])
