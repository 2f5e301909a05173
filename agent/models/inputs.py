"""What the conversation shows the model: the study's display image, a caption of allow-listed
facts, and the tools' figures — each through the privacy boundary, which may blank or hold them.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from agent.privacy.boundary import PrivacyBoundary
from tools.context import Artifact, ToolContext
from tools.errors import ImageWithheldError
from tools.render.model_image import downscale_for_model, model_image

if TYPE_CHECKING:
    from agent.conversation import Conversation


@dataclass(frozen=True)
class ImageForModel:
    png: bytes
    caption: str


def unseen_view(conversation: Conversation, max_side: int) -> ImageForModel | str | None:
    """The current display image when the model has not seen this study, frame and window yet
    (None when it has); the boundary's sentence instead when it holds the pixels."""
    key = conversation.current_view_key()
    if key is None or key == conversation.sent_view:
        return None
    conversation.sent_view = key
    try:
        return view_image(conversation.ctx, conversation.boundary, max_side)
    except ImageWithheldError as error:
        return f"{error} The tools still work on the image; their results are yours to use."


def view_image(ctx: ToolContext, boundary: PrivacyBoundary, max_side: int) -> ImageForModel:
    """The current view's display image, downscaled, with a caption the model can rely on.

    Raises ImageWithheldError when the boundary holds the study's pixels.
    """
    view = ctx.view()
    study = view.study
    image = model_image(study, view.frame, view.window, max_side, boundary)
    release = boundary.release(study)
    boundary.approve(image.png, onsite_only=release.onsite_only)
    facts = boundary.technical_facts(study, view.frame)
    facts["frame"] = f"{view.frame + 1} of {study.frame_count}"
    rendered = study.render(view.frame, view.window).window
    if rendered is not None:
        facts["window"] = f"{rendered.center:g}/{rendered.width:g}"
    listed = ", ".join(f"{name} {value}" for name, value in facts.items())
    sent = image.sent
    caption = (f"The image above is the study as the clinician sees it ({listed}), sent at "
               f"{sent.sent_width}×{sent.sent_height} px; box_2d and point coordinates refer to this image.")
    if release.status == "masked":
        caption += " Areas outside the ultrasound regions are blanked for privacy."
    return ImageForModel(png=image.png, caption=caption)


def artifact_image(ctx: ToolContext, boundary: PrivacyBoundary, artifact: Artifact, max_side: int) -> ImageForModel | None:
    """A tool's rendered figure, downscaled for the model — only when the current study's
    pixels are released as they are (a figure cannot be masked like the plain image)."""
    release = boundary.release(ctx.view().study)
    if release.status != "released":
        return None
    # A figure already within the size limit goes as it is: decoding and re-encoding it would
    # cost a PNG compression per figure and change nothing the model sees.
    with Image.open(BytesIO(artifact.data)) as opened:
        png = (artifact.data if max(opened.size) <= max_side
               else downscale_for_model(np.asarray(opened.convert("RGB")), max_side).png)
    boundary.approve(png, onsite_only=release.onsite_only)
    return ImageForModel(png=png, caption=f"Figure from the tool: {artifact.caption or artifact.name}.")
