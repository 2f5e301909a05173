"""The offline, zero-shot classical detector: ranked lesion candidates on a frame or a series.

Pipeline per frame: working image and organ mask (``working``), polarity-signed multi-scale
LoG candidates (``candidates``), evidence features (``evidence``), modality score and
calibrated confidence (``scoring``). On a CT/MR series every slice is searched (here, or in
chunks by several pre-read workers: ``SliceSearch``) and detections of the same lesion on
neighbouring slices are merged, keeping the slice where it is most conspicuous.

The centre of the leading detections is the centre of a 2-D Gaussian fitted to the blob, not
the scale-space peak: the LoG peaks where a blob of one of a few discrete sizes fits best, which
on an irregular or elongated lesion can sit well off its middle (dev: median centre deviation
of the top detection 6.9 -> 3.4 % of the diagonal on ultrasound, 3.4 -> 2.6 % on MR, 0.5 ->
0.3 % on CT; MR hit@1 0.69 -> 0.71, the other hits unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from tools.coordinates import BoxPx
from tools.detection.candidates import Candidate, ranked_candidates
from tools.detection.evidence import ScaleSpace
from tools.detection.performance import PerformanceTable, shipped_table
from tools.detection.scoring import RULES, Rules, confidence, scores
from tools.detection.working import RADIOGRAPHY, ComputedWhenRead, WorkingImage, prepare_study_frame
from tools.gaussian.fit import fit_gaussian_2d
from tools.study import Study

#: Detections (best first) whose centre is refined by a Gaussian fit: as many as ``detect_anomalies``
#: lists by default (its ``max_findings``). Each fit costs 25-35 ms at the working resolution.
REFINED_DETECTIONS = 5
#: The fit looks for the blob within this many blob radii of the scale-space peak (dev: 1.25-2
#: radii gave the same hits and medians within 0.3 % of the diagonal), and its centre is used
#: only if it stays within one radius of the peak (a fit that wanders off found something else).
REFINE_BOX_RADII = 1.5

#: What a detection is called, by modality (any radiograph as "DX"); ``LUNG_LABELS`` when the
#: lung fields were searched.
LABELS = {
    "CT": "focal density",
    "MR": "focal lesion with abnormal signal",
    "US": "hypoechoic mass",
    "DX": "focal opacity",
}
LUNG_LABELS = {"CT": "focal nodular opacity in the lung field", "DX": "focal opacity in the lung field"}
#: What a detection is called on a study the detector is not built for (``WorkingImage.outside``),
#: and the confidence it is capped at: below the anomaly threshold, so it is never called one.
REVIEW_LABEL = "region for review"
REVIEW_CAP = 0.45


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


def detection_json(detection: Detection) -> dict[str, object]:
    """A detection as JSON (floats round-trip exactly): what a pre-read chunk hands back."""
    return {"frame": detection.frame, "x": detection.x, "y": detection.y, "box": detection.box.as_list(),
            "radius_px": detection.radius_px, "score": detection.score, "confidence": detection.confidence,
            "label": detection.label}


def detection_from_json(data: Mapping[str, object]) -> Detection:
    x0, y0, x1, y1 = data["box"]  # type: ignore[misc]
    return Detection(frame=int(data["frame"]), x=float(data["x"]), y=float(data["y"]),  # type: ignore[arg-type]
                     box=BoxPx(x0=x0, y0=y0, x1=x1, y1=y1), radius_px=float(data["radius_px"]),  # type: ignore[arg-type]
                     score=float(data["score"]), confidence=float(data["confidence"]),  # type: ignore[arg-type]
                     label=str(data["label"]))


def label_for(modality: str | None, organ: str | None = None) -> str:
    """The offline label of a detection: by modality, and by where it was searched (``organ`` of
    the working image), so that a hand radiograph's finding does not say "lung field"."""
    modality = (modality or "").upper()
    modality = "DX" if modality in RADIOGRAPHY else modality
    if organ == "lungs":
        return LUNG_LABELS.get(modality, LUNG_LABELS["DX"])
    return LABELS.get(modality, "focal abnormality")


def _disk_box(work: WorkingImage, x: float, y: float, radius: float) -> BoxPx:
    """The box around a blob's disk (native px), clipped to the image."""
    rows, cols = work.native_shape
    return BoxPx.around(x, y, 2 * radius, 2 * radius).clipped(cols, rows)


def _to_detection(candidate: Candidate, value: float, work: WorkingImage, frame: int) -> Detection:
    x, y = work.to_native(candidate.x, candidate.y)
    radius = candidate.radius / work.scale
    if work.outside is not None:  # a generic search: regions for review, never called anomalies
        calibrated, label = min(confidence(value, work.modality), REVIEW_CAP), REVIEW_LABEL
    else:
        calibrated, label = confidence(value, work.modality), label_for(work.modality, work.organ)
    return Detection(frame=frame, x=x, y=y, box=_disk_box(work, x, y, radius), radius_px=radius, score=value,
                     confidence=calibrated, label=label)


def recentred(detection: Detection, work: WorkingImage) -> Detection:
    """The detection moved to the centre of a 2-D Gaussian fitted to its blob (background
    removed) on the working image; unchanged when the fit fails or wanders further than the
    blob's radius (it found something else). Its score stays the one it was ranked by."""
    x, y = work.to_working(detection.x, detection.y)
    radius = detection.radius_px * work.scale
    reach = REFINE_BOX_RADII * radius
    fit = fit_gaussian_2d(work.evidence_image, BoxPx(x0=x - reach, y0=y - reach, x1=x + reach, y1=y + reach),
                          polarity=work.polarity)
    fx, fy = fit.center_px
    if not fit.converged or math.hypot(fx - x, fy - y) > radius:
        return detection
    nx, ny = work.to_native(fx, fy)
    return replace(detection, x=nx, y=ny, box=_disk_box(work, nx, ny, detection.radius_px))


def detect_on_work(work: WorkingImage, frame: int = 0, limit: int = 10, space: ScaleSpace | None = None,
                   refine: int = REFINED_DETECTIONS, rules: Rules = RULES) -> list[Detection]:
    """Ranked detections on a prepared working image, most confident first; the first
    ``refine`` of them centred by a Gaussian fit (see ``recentred``)."""
    ranked = ranked_candidates(space or ScaleSpace(work), lambda found: scores(found, work, rules), limit)
    detections = [_to_detection(c, value, work, frame) for c, value in ranked]
    return [recentred(d, work) if rank < refine else d for rank, d in enumerate(detections)]


def detect_frame(study: Study, frame: int, limit: int = 10, refine: int = REFINED_DETECTIONS) -> list[Detection]:
    """Ranked detections on one frame of a study."""
    return detect_on_work(prepare_study_frame(study, frame), frame, limit, refine=refine)


class Detector(Protocol):
    """Something that finds candidate lesions on a frame: the classical detector (the default), or a
    trained model (``tools.detection.onnx_detector.OnnxDetector``)."""

    name: str

    def detect(self, study: Study, frame: int, limit: int = 10) -> list[Detection]:
        """Ranked detections on ``frame``, most confident first, in native pixels."""
        ...

    def performance(self) -> PerformanceTable | None:
        """Its measured performance per kind of image (``tools.detection.performance``); None
        when it has never been measured."""
        ...


@dataclass(frozen=True)
class ClassicalDetector:
    """The zero-shot classical detector of this package, as a ``Detector``."""

    name: str = "classical"

    def detect(self, study: Study, frame: int, limit: int = 10) -> list[Detection]:
        return detect_frame(study, frame, limit)

    def performance(self) -> PerformanceTable | None:
        return shipped_table()


@dataclass(frozen=True)
class FrameAnalysis:
    """A frame's working image, scale space and ranked candidates, computed once per frame."""

    work: WorkingImage
    space: ScaleSpace
    #: May be given as a function computing them, called when first read: a search of every
    #: slice uses the shown frame's working image and scale space, not its ranked detections.
    detections: list[Detection] = ComputedWhenRead()  # type: ignore[assignment]


def analyse_frame(study: Study, frame: int, limit: int = 30) -> FrameAnalysis:
    work = prepare_study_frame(study, frame)
    space = ScaleSpace(work)
    return FrameAnalysis(work, space, lambda: detect_on_work(work, frame, limit, space))


class DerivedCache(Protocol):
    """Where a session keeps derived data (``tools.context.ToolContext`` is one)."""

    def derived(self, key: tuple, compute: Callable[[], FrameAnalysis]) -> FrameAnalysis: ...


def frame_analysis(ctx: DerivedCache, study: Study, frame: int) -> FrameAnalysis:
    """A frame's analysis, computed once per session and shared by the tools that need it."""
    return ctx.derived(("frame-analysis", study.id, frame), lambda: analyse_frame(study, frame))


class SliceSearch(Protocol):
    """How the slices of a series are searched: here, one after another (``search_slices``), or
    shared out in chunks among pre-read workers (``agent.preread.chunks``)."""

    def __call__(self, study: Study, frames: Sequence[int], limit: int) -> list[Detection]:
        """Each of ``frames``' ranked detections (at most ``limit`` a slice), not yet re-centred."""
        ...


def search_slices(study: Study, frames: Sequence[int], limit: int) -> list[Detection]:
    """Each slice's ranked detections, not yet re-centred: what a whole-series search merges.
    Each working image is dropped once its slice is searched (about 2.3 MB a 512² CT slice), so
    a 300-slice series costs the memory of one slice, not of the whole series."""
    found: list[Detection] = []
    for frame in frames:
        work = prepare_study_frame(study, frame)
        found += detect_on_work(work, frame, limit, ScaleSpace(work, workers=1), refine=0)
    return found


def _slice_reach(study: Study, radius_px: float) -> int:
    """How many slices away a lesion of ``radius_px`` can still appear (at least 3)."""
    spacing = study.pixel_spacing_mm(0)
    between = study.safe.spacing_between_slices_mm
    if spacing is None or not between:
        return 3
    return max(3, int(np.ceil(2 * radius_px * min(spacing) / between)))


def detect_volume(study: Study, limit: int = 10, analysed: Mapping[int, FrameAnalysis] | None = None,
                  search: SliceSearch = search_slices) -> list[Detection]:
    """Detections across every slice of a series, one per lesion, on its best slice.

    ``analysed``: analyses of some of its frames already made (``frame_analysis``), whose working
    image and scale space are used again instead of being computed a second time. ``search``
    finds the other slices' detections. Only the detections kept are re-centred, each on its
    slice's working image, prepared again for those few slices.
    """
    analysed = analysed or {}
    everything = [d for frame, known in analysed.items()
                  for d in detect_on_work(known.work, frame, limit, known.space, refine=0)]
    everything += search(study, [f for f in range(study.frame_count) if f not in analysed], limit)
    everything.sort(key=lambda d: d.frame)  # in slice order, each slice's ranking kept: ties merge the same way
    works = {frame: known.work for frame, known in analysed.items()}

    def work_of(frame: int) -> WorkingImage:
        if frame not in works:
            works[frame] = prepare_study_frame(study, frame)
        return works[frame]

    return [recentred(d, work_of(d.frame)) for d in merged_across_slices(everything, study, limit)]


def merged_across_slices(everything: list[Detection], study: Study, limit: int) -> list[Detection]:
    """The strongest ``limit`` detections of a series, one per lesion: the same lesion on another
    slice sits at about the same (x, y), within its own extent, and is kept once."""
    kept: list[Detection] = []
    for detection in sorted(everything, key=lambda d: -d.score):
        if any(np.hypot(k.x - detection.x, k.y - detection.y) < max(k.radius_px, detection.radius_px)
               and abs(k.frame - detection.frame) <= _slice_reach(study, max(k.radius_px, detection.radius_px))
               for k in kept):
            continue
        kept.append(detection)
        if len(kept) >= limit:
            break
    return kept
