"""How far a detector can be trusted on each kind of image, and what its silence is worth.

A detector that misses most lesions of some kind must never let its negative read as a normal
study. Like a cleared CAD device, Loupe ships its detector with a **performance table**
(``performance.json`` beside this module): per kind of image — modality and body region, as
the detector itself classifies the image (``image_kind``) — the sensitivity at the anomaly
threshold, the precision of a flagged top finding, hit@1/hit@3, the false-positive rate on
normal images, and the number of images behind each figure. ``bench/detector_performance.py``
makes it from the cross-validated evaluation (``loupe eval --cv``) on the development set; a
trained detector carries its own table beside its model file, or none ("not measured").

A search with nothing at the threshold is ``no_anomaly_found`` only where the measured
sensitivity reaches ``SENSITIVITY_FLOOR`` on at least ``MIN_LESION_IMAGES`` lesion images;
anywhere else — a lower sensitivity, too few images, a kind the detector is not built for, a
detector never measured — it is ``inconclusive``. Neither is ever a normal study: the wording
says what was searched, that nothing reached the threshold, and how often lesions of that kind
are missed (``prompts/negatives.toml``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from prompts import load_table
from tools.detection.scoring import ANOMALY_THRESHOLD, modality_family
from tools.detection.working import WorkingImage
from tools.errors import LoupeError

#: The sensitivity a kind of image needs before a search with nothing at the threshold may be
#: called ``no_anomaly_found`` rather than ``inconclusive``. 0.8 is a low bar for a reader's aid
#: (one lesion in five still missed); below it a negative says too little to report.
SENSITIVITY_FLOOR = 0.8
#: A sensitivity measured on fewer lesion images than this does not support a negative either
#: (with 20 images, the 95 % interval around 0.85 still reaches down to 0.64).
MIN_LESION_IMAGES = 20
#: Fewer flagged top findings than this are too few to state a precision from.
MIN_FLAGGED_TOPS = 10

AssessmentResult = Literal["anomaly", "no_anomaly_found", "inconclusive"]
PERFORMANCE_FILE = "performance.json"


@dataclass(frozen=True)
class ImageKind:
    """A kind of image the detector is built for: ``key`` as in the table, ``name`` in words."""

    key: str
    name: str


#: (modality family, organ searched) -> kind. What the detector is built for (``working.COMPETENCE``).
KINDS = {
    ("CT", "lungs"): ImageKind("CT chest", "chest CT slices"),
    ("DX", "lungs"): ImageKind("DX chest", "chest radiographs"),
    ("MR", "brain"): ImageKind("MR head", "brain MR images"),
    ("US", "sector"): ImageKind("US breast", "breast ultrasound images"),
}


def image_kind(work: WorkingImage) -> ImageKind | None:
    """The kind of image ``work`` is, as the detector searched it; None outside its competence."""
    if work.outside is not None:
        return None
    return KINDS.get((modality_family(work.modality), work.organ))


class KindPerformance(BaseModel):
    """One kind of image's figures (held-out folds of the cross-validation)."""

    kind: str
    name: str = Field(description="The kind in words, e.g. 'chest radiographs'.")
    images: int
    lesion_images: int
    normal_images: int
    lesions_flagged: int = Field(description="Lesion images with a finding at the threshold inside a lesion.")
    sensitivity: float | None
    sensitivity_ci95: tuple[float, float] | None = Field(description="Wilson 95 % interval.")
    flagged_tops: int = Field(description="Images whose top finding reached the threshold.")
    flagged_tops_on_lesion: int
    precision_flagged_top: float | None
    hit_at_1: float | None
    hit_at_3: float | None
    normals_flagged: int
    false_positive_rate: float | None
    calibration_ece: float | None = Field(default=None, description="Expected calibration error of the top-5 "
                                                                     "confidences, 10 bins.")


class DevSet(BaseModel):
    """The images a table was measured on."""

    manifest: str
    sha256: str
    images: int
    lesion_images: int
    normal_images: int
    folds: int
    measured_on: date


class PerformanceTable(BaseModel):
    """A detector's measured performance, per kind of image."""

    detector: str
    anomaly_threshold: float
    method: str
    dev_set: DevSet
    kinds: dict[str, KindPerformance]
    notes: list[str] = Field(default_factory=list)

    def for_kind(self, kind: ImageKind | None) -> KindPerformance | None:
        return None if kind is None else self.kinds.get(kind.key)


class PerformanceTableError(LoupeError):
    """A performance table that cannot be read."""


def read_table(path: Path) -> PerformanceTable:
    """A performance table from a file (a site's own measurement, or a trained model's)."""
    try:
        return PerformanceTable.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError) as error:
        raise PerformanceTableError(f"The detector performance table '{path.name}' cannot be read.") from error


@cache
def shipped_table() -> PerformanceTable:
    """The classical detector's table, as shipped in this package."""
    text = resources.files(__package__).joinpath(PERFORMANCE_FILE).read_text(encoding="utf-8")
    return PerformanceTable.model_validate(json.loads(text))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials)."""
    if trials == 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)


# -- what a result means ---------------------------------------------------------------------------


class Assessment(BaseModel):
    """What a search found, and what it is worth on this kind of image."""

    result: AssessmentResult
    reason: str
    #: What a flagged finding's confidence means here ("not measured" in words where it is not).
    confidence_meaning: str | None = None
    #: How often the detector flags a lesion on this kind of image, in words (part of ``reason``
    #: for a negative), for a statement about one region of the image.
    sensitivity: str | None = None


@dataclass(frozen=True)
class Measured:
    """A detector consulted on an image, and its figures for the image's kind (None: not measured)."""

    detector: str  # in words: "the offline detector", "the detector model m.onnx"
    performance: KindPerformance | None


def _templates() -> dict[str, str]:
    return load_table("negatives.toml")["templates"]


def supports_negative(performance: KindPerformance | None) -> bool:
    """Whether a search with nothing at the threshold may be called ``no_anomaly_found``."""
    return (performance is not None and performance.sensitivity is not None
            and performance.lesion_images >= MIN_LESION_IMAGES and performance.sensitivity >= SENSITIVITY_FLOOR)


def sensitivity_sentence(measured: Measured, kind: ImageKind | None) -> str:
    """How often the detector flags a lesion on this kind of image, in words."""
    t = _templates()
    perf = measured.performance
    if kind is None:
        return t["kind_not_measured"].format(detector=measured.detector)
    if perf is None or perf.sensitivity is None:
        return t["sensitivity_not_measured"].format(detector=measured.detector, kind=kind.name)
    return t["sensitivity"].format(detector=measured.detector, kind=perf.name, flagged=perf.lesions_flagged,
                                   lesions=perf.lesion_images, sensitivity=perf.sensitivity)


def confidence_sentence(measured: Measured, kind: ImageKind | None) -> str:
    """What a flagged finding's confidence means on this kind of image (the precision of a
    flagged top finding in the evaluation)."""
    t = _templates()
    perf = measured.performance
    if kind is None or perf is None or perf.precision_flagged_top is None:
        return t["confidence_not_measured"].format(detector=measured.detector)
    if perf.flagged_tops < MIN_FLAGGED_TOPS:
        return t["confidence_few"].format(kind=perf.name, detector=measured.detector, correct=perf.flagged_tops_on_lesion,
                                          flagged=perf.flagged_tops)
    return t["confidence"].format(kind=perf.name, detector=measured.detector, correct=perf.flagged_tops_on_lesion,
                                  flagged=perf.flagged_tops, precision=perf.precision_flagged_top)


def assess(anomaly: bool, kind: ImageKind | None, consulted: list[Measured], *,
           threshold: float = ANOMALY_THRESHOLD) -> Assessment:
    """The assessment of a search on an image of ``kind`` by the ``consulted`` detectors (the
    classical one first). Nothing at the threshold is ``no_anomaly_found`` when any consulted
    detector's measured sensitivity on this kind supports a negative (together they flag at
    least as often as either alone), else ``inconclusive``."""
    t = _templates()
    lead = consulted[0]
    meaning = confidence_sentence(lead, kind)
    best = max(consulted, key=lambda m: (supports_negative(m.performance),
                                         (m.performance.sensitivity or 0.0) if m.performance else -1.0))
    sensitivity = sensitivity_sentence(best, kind)
    if anomaly:
        return Assessment(result="anomaly", reason=t["anomaly"].format(meaning=meaning), confidence_meaning=meaning,
                          sensitivity=sensitivity)
    if kind is not None and supports_negative(best.performance):
        reason = t["nothing_found"].format(threshold=threshold, sensitivity=sensitivity)
        return Assessment(result="no_anomaly_found", reason=reason, confidence_meaning=meaning,
                          sensitivity=sensitivity)
    if kind is None:
        reason = t["inconclusive_outside"].format(threshold=threshold, sensitivity=sensitivity)
    elif best.performance is not None and best.performance.lesion_images < MIN_LESION_IMAGES:
        reason = t["inconclusive_few"].format(threshold=threshold, sensitivity=sensitivity, minimum=MIN_LESION_IMAGES)
    elif best.performance is None or best.performance.sensitivity is None:
        reason = t["inconclusive_unmeasured"].format(threshold=threshold, sensitivity=sensitivity)
    else:
        reason = t["inconclusive"].format(threshold=threshold, sensitivity=sensitivity, floor=SENSITIVITY_FLOOR)
    return Assessment(result="inconclusive", reason=reason, confidence_meaning=meaning, sensitivity=sensitivity)



def region_not_cleared(assessment: Assessment, threshold: float = ANOMALY_THRESHOLD) -> str:
    """What a region of the image with nothing at the threshold is worth (a second-read step)."""
    return _templates()["region_not_cleared"].format(threshold=threshold, sensitivity=assessment.sensitivity)


def silent_model(model: str) -> str:
    """What a vision model proposing nothing verifiable is worth: its sensitivity is not measured."""
    return _templates()["vision_silent"].format(model=model)
