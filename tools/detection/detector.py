"""The offline, zero-shot classical detector: ranked lesion candidates on a frame or a series.

Pipeline per frame: working image and organ mask (``working``), polarity-signed multi-scale
LoG candidates (``candidates``), evidence features (``evidence``), modality score and
calibrated confidence (``scoring``). On a CT/MR series every slice (or an even sample of at
most ``MAX_SLICES``) is searched and detections of the same lesion on neighbouring slices are
merged, keeping the slice where it is most conspicuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.context import ToolContext
from tools.coordinates import BoxPx
from tools.detection.candidates import Candidate, ranked_candidates
from tools.detection.evidence import ScaleSpace
from tools.detection.scoring import confidence, score
from tools.detection.working import WorkingImage, prepare_study_frame
from tools.study import Study

MAX_SLICES = 64

LABELS = {
    "CT": "focal nodular opacity in the lung field",
    "MR": "focal lesion with abnormal signal",
    "US": "hypoechoic mass",
    "CR": "focal opacity in the lung field",
    "DX": "focal opacity in the lung field",
}


@dataclass(frozen=True)
class Detection:
    """One ranked candidate in native pixel coordinates."""

    frame: int
    x: float
    y: float
    box: BoxPx
    radius_px: float
    score: float
    confidence: float
    label: str


def label_for(modality: str | None) -> str:
    return LABELS.get((modality or "").upper(), "focal abnormality")


def _to_detection(candidate: Candidate, work: WorkingImage, frame: int) -> Detection:
    x, y = work.to_native(candidate.x, candidate.y)
    radius = candidate.radius / work.scale
    rows, cols = work.native_shape
    box = BoxPx.around(x, y, 2 * radius, 2 * radius).clipped(cols, rows)
    value = score(candidate, work)
    return Detection(frame=frame, x=x, y=y, box=box, radius_px=radius, score=value,
                     confidence=confidence(value, work.modality), label=label_for(work.modality))


def detect_on_work(work: WorkingImage, frame: int = 0, limit: int = 10,
                   space: ScaleSpace | None = None) -> list[Detection]:
    """Ranked detections on a prepared working image, most confident first."""
    candidates = ranked_candidates(space or ScaleSpace(work), lambda c: score(c, work), limit)
    return [_to_detection(c, work, frame) for c in candidates]


def detect_frame(study: Study, frame: int, limit: int = 10) -> list[Detection]:
    """Ranked detections on one frame of a study."""
    return detect_on_work(prepare_study_frame(study, frame), frame, limit)


@dataclass(frozen=True)
class FrameAnalysis:
    """A frame's working image, scale space and ranked candidates, computed once per frame."""

    work: WorkingImage
    space: ScaleSpace
    detections: list[Detection]


def analyse_frame(study: Study, frame: int, limit: int = 30) -> FrameAnalysis:
    work = prepare_study_frame(study, frame)
    space = ScaleSpace(work)
    return FrameAnalysis(work, space, detect_on_work(work, frame, limit, space))


def frame_analysis(ctx: ToolContext, study: Study, frame: int) -> FrameAnalysis:
    """A frame's analysis, computed once per session and shared by the tools that need it."""
    return ctx.derived(("frame-analysis", study.id, frame), lambda: analyse_frame(study, frame))


def _slices(study: Study) -> list[int]:
    count = study.frame_count
    if count <= MAX_SLICES:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, MAX_SLICES)})


def _slice_reach(study: Study, radius_px: float) -> int:
    """How many slices away a lesion of ``radius_px`` can still appear (at least 3)."""
    spacing = study.pixel_spacing_mm(0)
    between = study.safe.spacing_between_slices_mm
    if spacing is None or not between:
        return 3
    return max(3, int(np.ceil(2 * radius_px * min(spacing) / between)))


def detect_volume(study: Study, limit: int = 10) -> list[Detection]:
    """Detections across the slices of a series, one per lesion, on its best slice."""
    everything = [d for frame in _slices(study) for d in detect_frame(study, frame, limit)]
    everything.sort(key=lambda d: -d.score)
    kept: list[Detection] = []
    for detection in everything:
        # The same lesion on another slice sits at about the same (x, y), within its own extent.
        if any(np.hypot(k.x - detection.x, k.y - detection.y) < max(k.radius_px, detection.radius_px)
               and abs(k.frame - detection.frame) <= _slice_reach(study, max(k.radius_px, detection.radius_px))
               for k in kept):
            continue
        kept.append(detection)
        if len(kept) >= limit:
            break
    return kept
