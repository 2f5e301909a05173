"""A trained detector behind the same seam as the classical one: an ONNX model run by ONNX Runtime.

The classical, zero-shot detector does not generalise on chest radiographs (see the closing
notes of issue 15); a model trained on many more images than Loupe's development set may. Loupe
ships no weights (none can be downloaded here, and a hospital chooses its own): this module is
the tested seam a model file plugs into (``LOUPE_DETECTOR_MODEL``): ``detect_anomalies`` verifies
its boxes against the pixels like any proposal (findings with source "model"), and ``loupe eval``
scores it.

Model contract
--------------
- **Input:** one float32 tensor ``[1, C, H, W]``, C = 1 or 3 (grey replicated), H and W from the
  model (512 where they are dynamic). The frame is taken as shown on screen (MONOCHROME1 and
  colour handled as for the classical detector), scaled to [0, 1] between its 1st and 99.5th
  percentiles, resized to fit H × W keeping its aspect ratio, and padded with 0 on the right
  and at the bottom ("letterbox").
- **Output:** the first output, ``[N, 5]`` or ``[1, N, 5]``: ``x0, y0, x1, y1, score`` per box, in
  the input tensor's pixels, score in [0, 1] (detectors exported with their non-maximum
  suppression have this shape).

Boxes are mapped back to native pixels (the letterbox undone, clipped to the image) and become
``Detection``s ranked by score; the score is the confidence (a trained model's scores are its
own calibration). Like every proposal they are then verified against the pixels.

**Performance:** a model carries its measured performance per kind of image as
``<model>.performance.json`` beside it (``tools.detection.performance.PerformanceTable``);
without one, what its silence and its confidences mean is "not measured".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tools.coordinates import BoxPx
from tools.detection.detector import Detection, label_for
from tools.detection.performance import PerformanceTable, read_table
from tools.detection.working import frame_as_shown
from tools.errors import ModelUnavailableError
from tools.study import Study

#: The input side used where the model leaves it dynamic.
DEFAULT_SIDE = 512
#: Boxes scored below this are dropped.
MIN_SCORE = 0.05


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model's input: ``scale`` model px per native px."""

    scale: float
    native_rows: int
    native_columns: int

    def to_native(self, x0: float, y0: float, x1: float, y1: float) -> BoxPx:
        """A box in input-tensor pixel edges -> an inclusive native pixel box, clipped."""
        box = BoxPx(x0=x0 / self.scale, y0=y0 / self.scale, x1=x1 / self.scale - 1.0, y1=y1 / self.scale - 1.0)
        return box.clipped(self.native_columns, self.native_rows)


def letterboxed(values: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    """``values`` scaled to [0, 1] by percentiles and fitted into ``height`` × ``width``."""
    low, high = np.percentile(values, [1.0, 99.5])
    scaled = np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
    rows, cols = scaled.shape
    scale = min(height / rows, width / cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    resized = np.asarray(Image.fromarray(scaled, mode="F").resize(size, Image.Resampling.BILINEAR))
    canvas = np.zeros((height, width), np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, Letterbox(scale=scale, native_rows=rows, native_columns=cols)


def decode(output: np.ndarray, letterbox: Letterbox, frame: int, label: str, limit: int) -> list[Detection]:
    """The model's ``[N, 5]`` (or ``[1, N, 5]``) boxes as ranked native-pixel detections."""
    rows = np.asarray(output, dtype=np.float32).reshape(-1, 5)
    detections = []
    for x0, y0, x1, y1, score in rows[np.argsort(-rows[:, 4], kind="stable")]:
        if not np.isfinite([x0, y0, x1, y1, score]).all() or score < MIN_SCORE or x1 <= x0 or y1 <= y0:
            continue
        box = letterbox.to_native(float(x0), float(y0), float(x1), float(y1))
        cx, cy = box.center
        detections.append(Detection(frame=frame, x=cx, y=cy, box=box, radius_px=max(box.width, box.height) / 2,
                                    score=float(score), confidence=float(min(score, 1.0)), label=label))
        if len(detections) >= limit:
            break
    return detections


@dataclass
class OnnxDetector:
    """``tools.detection.detector.Detector`` over an ONNX model file (see the module contract)."""

    model_path: Path
    name: str = "onnx"
    _session: object = field(default=None, init=False, repr=False)

    def _loaded(self):
        if self._session is None:
            if importlib.util.find_spec("onnxruntime") is None:
                raise ModelUnavailableError("A detector model is configured, but ONNX Runtime is not installed; "
                                            "install it with: pip install 'loupe[onnx]'.")
            import onnxruntime

            if not self.model_path.is_file():
                raise ModelUnavailableError(f"The detector model {self.model_path} does not exist.")
            try:
                self._session = onnxruntime.InferenceSession(str(self.model_path),
                                                             providers=["CPUExecutionProvider"])
            except Exception as error:  # ONNX Runtime raises its own types for a bad file
                raise ModelUnavailableError(f"The detector model {self.model_path.name} could not be loaded "
                                            f"({type(error).__name__}).") from error
        return self._session

    def performance(self) -> PerformanceTable | None:
        """The model's own performance table, ``<model>.performance.json`` beside the model file
        (made by ``bench/detector_performance.py`` style measurement on the model); None when it
        has none: its negatives are then "not measured", never "no anomaly"."""
        table = self.model_path.with_suffix(".performance.json")
        return read_table(table) if table.is_file() else None

    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the model takes; dynamic sides become ``DEFAULT_SIDE``."""
        shape = self._loaded().get_inputs()[0].shape
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ModelUnavailableError(f"The detector model takes {shape}, not [1, 1 or 3, H, W].")
        side = [dim if isinstance(dim, int) and dim > 0 else DEFAULT_SIDE for dim in shape[2:]]
        return int(shape[1]), side[0], side[1]

    def detect(self, study: Study, frame: int, limit: int = 10) -> list[Detection]:
        session = self._loaded()
        channels, height, width = self.input_shape()
        image, letterbox = letterboxed(frame_as_shown(study, frame), height, width)
        tensor = np.repeat(image[None, None], channels, axis=1)
        outputs = session.run(None, {session.get_inputs()[0].name: tensor})
        return decode(outputs[0], letterbox, frame, label_for(study.modality), limit)
