"""Scoring localisation honestly: ranked predictions against the manifest's lesions.

Metrics follow ``../shared/docs/evaluation.md``: hit@1, hit@3, centre deviation in px and in %
of the image diagonal, the false-positive rate on normal images at the app's "anomaly"
threshold, and always the centre-guess baseline in the same run.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from agent.evaluation.manifest import EvalImage, Lesion
from tools.errors import LoupeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """A ranked candidate centre with the confidence the app would show."""

    x: float
    y: float
    confidence: float


Predictor = Callable[[EvalImage], Sequence[Prediction]]


def failure_line(image: EvalImage, error: Exception) -> str:
    """One line naming an image that could not be analysed (it scores as a miss), and why; an
    unexpected error is logged in full."""
    if isinstance(error, LoupeError):
        return f"{image.path.name}: {error.message}"
    log.error("evaluation of %s failed", image.path, exc_info=error)
    return f"{image.path.name}: internal error ({type(error).__name__}: {error})"


def centre_guess(image: EvalImage) -> list[Prediction]:
    """The baseline every number must beat: the image centre, always."""
    return [Prediction((image.width - 1) / 2.0, (image.height - 1) / 2.0, 1.0)]


class GroupScore(BaseModel):
    group: str
    n: int
    hit_at_1: float | None
    hit_at_3: float | None
    mean_dev_px: float | None
    median_dev_px: float | None
    mean_dev_pct: float | None
    median_dev_pct: float | None
    normals: int
    false_positive_rate: float | None


def hits(predictions: Sequence[Prediction], lesions: Sequence[Lesion], top: int) -> bool:
    return any(l.box.contains(p.x, p.y) for p in predictions[:top] for l in lesions)


def deviation(prediction: Prediction | None, image: EvalImage, lesions: Sequence[Lesion]) -> float:
    if prediction is None:  # no answer: as far as the image allows
        return image.diagonal
    return min(math.hypot(prediction.x - l.center[0], prediction.y - l.center[1]) for l in lesions)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def score(images: Iterable[EvalImage], predictions: dict[Path, Sequence[Prediction]],
          anomaly_threshold: float) -> list[GroupScore]:
    """Per group and overall ("all") scores of ranked predictions."""
    groups: dict[str, list[EvalImage]] = defaultdict(list)
    for image in images:
        groups[image.group].append(image)
        groups["all"].append(image)
    scores = []
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        members = groups[name]
        lesion_images = [i for i in members if i.lesions]
        normals = [i for i in members if not i.lesions]
        hit1, hit3, dev_px, dev_pct = [], [], [], []
        for image in lesion_images:
            ranked = list(predictions[image.path])
            lesions = image.scored_lesions()
            hit1.append(hits(ranked, lesions, 1))
            hit3.append(hits(ranked, lesions, 3))
            off = deviation(ranked[0] if ranked else None, image, lesions)
            dev_px.append(off)
            dev_pct.append(100.0 * off / image.diagonal)
        flagged = [any(p.confidence >= anomaly_threshold for p in predictions[i.path]) for i in normals]
        scores.append(GroupScore(
            group=name, n=len(lesion_images),
            hit_at_1=_mean([float(h) for h in hit1]), hit_at_3=_mean([float(h) for h in hit3]),
            mean_dev_px=_mean(dev_px), median_dev_px=_median(dev_px),
            mean_dev_pct=_mean(dev_pct), median_dev_pct=_median(dev_pct),
            normals=len(normals), false_positive_rate=_mean([float(f) for f in flagged]),
        ))
    return scores


def format_scores(title: str, scores: Sequence[GroupScore]) -> str:
    """A Markdown table of group scores."""
    def fmt(value: float | None, pattern: str) -> str:
        return "—" if value is None else format(value, pattern)

    lines = [f"### {title}", "",
             "| group | n | hit@1 | hit@3 | mean dev px | median dev px | mean dev %diag | median dev %diag | normals | FP rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {s.group} | {s.n} | {fmt(s.hit_at_1, '.2f')} | {fmt(s.hit_at_3, '.2f')} | "
            f"{fmt(s.mean_dev_px, '.1f')} | {fmt(s.median_dev_px, '.1f')} | {fmt(s.mean_dev_pct, '.1f')} | "
            f"{fmt(s.median_dev_pct, '.1f')} | {s.normals} | {fmt(s.false_positive_rate, '.2f')} |")
    return "\n".join(lines)
