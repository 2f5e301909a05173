"""The detector's performance per kind of image, from the cross-validated predictions: what
``tools/detection/performance.json`` ships (``bench/detector_performance.py`` writes it) and what
``loupe eval --cv`` prints beside its tables.

For each kind of image the detector is built for (``tools.detection.performance.image_kind``),
over the held-out folds:

- **sensitivity** — lesion images with a prediction at the anomaly threshold inside a lesion box,
  over all lesion images (with its Wilson 95 % interval);
- **precision of a flagged top finding** — images (lesion or normal) whose top prediction reached
  the threshold and lies inside a lesion box, over all images whose top prediction reached it;
- hit@1 and hit@3, the **false-positive rate** on normal images (any prediction at the
  threshold), and the **expected calibration error** of the top-five confidences (10 bins).

LIDC images with only <3 mm marks are left out (the evaluation reports them apart, and no one
expects a detector to flag a 2 mm mark), as are images outside the detector's competence.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

from agent.evaluation.calibration import TOP_CANDIDATES
from agent.evaluation.crossval import ImageRuns
from agent.evaluation.manifest import SMALL_NODULE, EvalImage
from agent.evaluation.scoring import Prediction, hits
from tools.detection.performance import (KINDS, DevSet, KindPerformance, PerformanceTable, wilson_interval)

CALIBRATION_BINS = 10
METHOD = ("{k}-fold cross-validation on the development set (folds stratified by dataset; each fold's "
          "rules and confidence calibration chosen on the other folds; `loupe eval --cv {k}`)")
NOTES = ["LIDC slices with only <3 mm marks are not counted (reported apart by `loupe eval`).",
         "Images outside the detector's competence (e.g. an abdominal MR) are not counted: there, every "
         "negative is inconclusive."]


def counted(image: EvalImage) -> bool:
    """Whether an image counts towards its kind's figures (not a <3 mm-only LIDC slice)."""
    return not image.lesions or any(lesion.label != SMALL_NODULE for lesion in image.lesions)


def expected_calibration_error(pairs: Sequence[tuple[float, bool]], bins: int = CALIBRATION_BINS) -> float | None:
    """Mean |confidence − hit rate| over equal-width confidence bins, weighted by their share."""
    if not pairs:
        return None
    confidence = np.array([p for p, _ in pairs], dtype=float)
    hit = np.array([h for _, h in pairs], dtype=float)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - hit[inside].mean())
    return round(float(error), 4)


def top_confidences(image: EvalImage, predictions: Sequence[Prediction]) -> list[tuple[float, bool]]:
    """(confidence, inside a lesion box) of an image's top-five predictions."""
    lesions = image.scored_lesions()
    return [(p.confidence, any(l.box.contains(p.x, p.y) for l in lesions)) for p in predictions[:TOP_CANDIDATES]]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def kind_performance(key: str, members: Sequence[tuple[EvalImage, Sequence[Prediction]]],
                     threshold: float) -> KindPerformance:
    """One kind's figures from its images' (held-out) predictions."""
    lesion_images = [(i, p) for i, p in members if i.lesions]
    normals = [(i, p) for i, p in members if not i.lesions]
    flagged = [(i, p) for i, p in lesion_images
               if any(q.confidence >= threshold and any(l.box.contains(q.x, q.y) for l in i.scored_lesions())
                      for q in p)]
    tops = [(i, p) for i, p in members if p and p[0].confidence >= threshold]
    tops_on_lesion = [(i, p) for i, p in tops if hits(p, i.scored_lesions(), 1)]
    normals_flagged = [(i, p) for i, p in normals if any(q.confidence >= threshold for q in p)]
    pairs = [pair for i, p in members for pair in top_confidences(i, p)]
    n = len(lesion_images)
    return KindPerformance(
        kind=key, name=next(k.name for k in KINDS.values() if k.key == key), images=len(members), lesion_images=n,
        normal_images=len(normals), lesions_flagged=len(flagged), sensitivity=_ratio(len(flagged), n),
        sensitivity_ci95=wilson_interval(len(flagged), n), flagged_tops=len(tops),
        flagged_tops_on_lesion=len(tops_on_lesion), precision_flagged_top=_ratio(len(tops_on_lesion), len(tops)),
        hit_at_1=_ratio(sum(hits(p, i.scored_lesions(), 1) for i, p in lesion_images), n),
        hit_at_3=_ratio(sum(hits(p, i.scored_lesions(), 3) for i, p in lesion_images), n),
        normals_flagged=len(normals_flagged), false_positive_rate=_ratio(len(normals_flagged), len(normals)),
        calibration_ece=expected_calibration_error(pairs))


def performance_by_kind(runs: Sequence[ImageRuns], predictions: dict[Path, list[Prediction]],
                        threshold: float) -> dict[str, KindPerformance]:
    """Every measured kind's figures (kinds in ``KINDS`` order)."""
    members: dict[str, list[tuple[EvalImage, list[Prediction]]]] = defaultdict(list)
    for run in runs:
        if run.kind is not None and counted(run.image):
            members[run.kind].append((run.image, predictions[run.image.path]))
    return {kind.key: kind_performance(kind.key, members[kind.key], threshold)
            for kind in KINDS.values() if members.get(kind.key)}


def performance_table(manifest: Path, runs: Sequence[ImageRuns], held_out: dict[Path, list[Prediction]], *,
                      k: int, threshold: float, measured_on: date | None = None) -> PerformanceTable:
    """The shipped table's content: the per-kind figures and what they were measured on."""
    images = [run.image for run in runs]
    dev_set = DevSet(manifest=manifest.name, sha256=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                     images=len(images), lesion_images=sum(1 for i in images if i.lesions),
                     normal_images=sum(1 for i in images if not i.lesions), folds=k,
                     measured_on=measured_on or date.today())
    return PerformanceTable(detector="classical", anomaly_threshold=threshold, method=METHOD.format(k=k),
                            dev_set=dev_set, kinds=performance_by_kind(runs, held_out, threshold), notes=NOTES)


def format_performance(title: str, kinds: dict[str, KindPerformance]) -> str:
    """A Markdown table of per-kind figures."""
    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    lines = [f"### {title}", "",
             "| kind | images | lesion images | sensitivity (95 % CI) | flagged tops correct | precision | hit@1 | "
             "hit@3 | normals | FP rate | ECE |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for perf in kinds.values():
        ci = "" if perf.sensitivity_ci95 is None else f" ({perf.sensitivity_ci95[0]:.2f}–{perf.sensitivity_ci95[1]:.2f})"
        lines.append(
            f"| {perf.name} | {perf.images} | {perf.lesion_images} | {perf.lesions_flagged}/{perf.lesion_images} = "
            f"{fmt(perf.sensitivity)}{ci} | {perf.flagged_tops_on_lesion}/{perf.flagged_tops} | "
            f"{fmt(perf.precision_flagged_top)} | {fmt(perf.hit_at_1)} | {fmt(perf.hit_at_3)} | {perf.normal_images} | "
            f"{fmt(perf.false_positive_rate)} | {fmt(perf.calibration_ece)} |")
    return "\n".join(lines)
