"""The one way an image of a study is prepared for a vision model.

Both the conversation (the display image the model looks at) and ``detect_anomalies`` (the
image the model proposes boxes on) go through ``model_image``, so the ``SentImage`` used to
convert the model's ``box_2d`` back to native pixels always matches the pixels actually sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from tools.coordinates import SentImage
from tools.render.png import encode_png
from tools.study import Study, Window


class ImagePolicy(Protocol):
    """What of a study's pixels may be shown to a vision model (the agent's privacy boundary).

    ``prepare`` returns the pixels to send — possibly with regions blanked — or raises
    ``ImageWithheldError`` when they may not be sent at all.
    """

    def prepare(self, study: Study, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelImage:
    """PNG bytes as sent to the model, and how they map to the native frame."""

    png: bytes
    sent: SentImage


def downscale_for_model(pixels: np.ndarray, max_side: int) -> ModelImage:
    """Downscale (never upscale) so the long side is at most ``max_side``; encode as PNG."""
    height, width = pixels.shape[:2]
    sent = SentImage.fit_long_side(width, height, max_side)
    if (sent.sent_width, sent.sent_height) != (width, height):
        resized = Image.fromarray(pixels).resize((sent.sent_width, sent.sent_height), Image.Resampling.LANCZOS)
        pixels = np.asarray(resized)
    return ModelImage(png=encode_png(pixels), sent=sent)


def model_image(study: Study, frame: int, window: Window | None, max_side: int,
                policy: ImagePolicy | None = None) -> ModelImage:
    """The display image of ``frame`` under ``window``, as a vision model should see it.

    ``policy`` (the privacy boundary) may blank parts of it, or withhold it by raising
    ``ImageWithheldError``.
    """
    pixels = study.render(frame, window).pixels
    if policy is not None:
        pixels = policy.prepare(study, pixels)
    return downscale_for_model(pixels, max_side)
