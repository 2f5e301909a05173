"""What the conversation shows the model: the study's display image and a caption of safe facts.

Only rendered pixels and allow-listed technical metadata (modality, body part, size, spacing,
slice thickness, frame, window) appear here; nothing from the header that identifies anyone,
and no free text from the file, which could carry instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image

from tools.context import Artifact, ToolContext
from tools.model_image import ModelImage, downscale_for_model, model_image


@dataclass(frozen=True)
class ImageForModel:
    png: bytes
    caption: str


def view_image(ctx: ToolContext, max_side: int) -> ImageForModel:
    """The current view's display image, downscaled, with a caption the model can rely on."""
    view = ctx.view()
    study = view.study
    image = model_image(study, view.frame, view.window, max_side)
    return ImageForModel(png=image.png, caption=_view_caption(ctx, image))


def _view_caption(ctx: ToolContext, image: ModelImage) -> str:
    view = ctx.view()
    study, safe = view.study, view.study.safe
    sent = image.sent
    facts = [f"modality {safe.modality or 'unknown'}"]
    if safe.body_part:
        facts.append(f"body part {safe.body_part}")
    facts.append(f"frame {view.frame + 1} of {study.frame_count}")
    facts.append(f"native size {sent.native_width}×{sent.native_height} px")
    spacing = study.pixel_spacing_mm(view.frame)
    facts.append(f"pixel spacing {spacing[0]:.3g}×{spacing[1]:.3g} mm" if spacing else "no pixel spacing (sizes in px)")
    if safe.slice_thickness_mm:
        facts.append(f"slice thickness {safe.slice_thickness_mm:.3g} mm")
    rendered = study.render(view.frame, view.window).window
    if rendered is not None:
        facts.append(f"window {rendered.center:g}/{rendered.width:g}")
    return (f"The image above is the study as the clinician sees it ({', '.join(facts)}), sent at "
            f"{sent.sent_width}×{sent.sent_height} px; box_2d and point coordinates refer to this image.")


def artifact_image(artifact: Artifact, max_side: int) -> ImageForModel:
    """A tool's rendered figure, downscaled for the model."""
    with Image.open(BytesIO(artifact.data)) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    image = downscale_for_model(pixels, max_side)
    return ImageForModel(png=image.png, caption=f"Figure from the tool: {artifact.caption or artifact.name}.")
