"""Scoring localisation honestly on a manifest of images with lesion boxes.

The manifest format is ``../shared/data/eval/manifest.csv``: one row per lesion (a normal image
has one row with an empty ``lesion_id``), boxes inclusive in native pixels, centres with the
top-left pixel's centre at (0, 0). Metrics follow ``../shared/docs/evaluation.md``: hit@1,
hit@3, centre deviation in px and in % of the image diagonal, the false-positive rate on normal
images at the app's "anomaly" threshold, and always the centre-guess baseline in the same run.
LIDC rows marked ``nodule_lt3mm`` (3 mm point marks) are scored as their own group.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from tools.coordinates import BoxPx

SMALL_NODULE = "nodule_lt3mm"


@dataclass(frozen=True)
class Lesion:
    box: BoxPx
    center: tuple[float, float]
    label: str


@dataclass
class EvalImage:
    """One image of the manifest with all its lesions (empty for a normal image)."""

    path: Path
    dataset: str
    modality: str
    width: int
    height: int
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def diagonal(self) -> float:
        return math.hypot(self.width, self.height)

    @property
    def group(self) -> str:
        """The row group for the tables: LIDC images with only <3 mm marks stand apart."""
        if self.lesions and all(l.label == SMALL_NODULE for l in self.lesions):
            return f"{self.dataset} (<3 mm)"
        return self.dataset

    def scored_lesions(self) -> list[Lesion]:
        """Lesions that count for hits: <3 mm marks only where nothing else is marked."""
        regular = [l for l in self.lesions if l.label != SMALL_NODULE]
        return regular or self.lesions


def read_manifest(manifest: Path) -> list[EvalImage]:
    """Group the manifest's rows by image; paths resolve relative to the manifest's folder."""
    images: dict[str, EvalImage] = {}
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["image_path"]
            image = images.get(key)
            if image is None:
                image = images[key] = EvalImage(
                    path=manifest.parent / key, dataset=row["dataset"], modality=row["modality"],
                    width=int(row["width"]), height=int(row["height"]))
            if row["lesion_id"] and row["bbox_x0"]:
                box = BoxPx(**{k: float(row[f"bbox_{k}"]) for k in ("x0", "y0", "x1", "y1")})
                image.lesions.append(Lesion(box=box, center=(float(row["center_x"]), float(row["center_y"])),
                                            label=row["label"]))
    return list(images.values())


@dataclass(frozen=True)
class Prediction:
    """A ranked candidate centre with the confidence the app would show."""

    x: float
    y: float
    confidence: float


Predictor = Callable[[EvalImage], Sequence[Prediction]]


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


def _hits(predictions: Sequence[Prediction], lesions: Sequence[Lesion], top: int) -> bool:
    return any(l.box.contains(p.x, p.y) for p in predictions[:top] for l in lesions)


def _deviation(prediction: Prediction | None, image: EvalImage, lesions: Sequence[Lesion]) -> float:
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
            hit1.append(_hits(ranked, lesions, 1))
            hit3.append(_hits(ranked, lesions, 3))
            deviation = _deviation(ranked[0] if ranked else None, image, lesions)
            dev_px.append(deviation)
            dev_pct.append(100.0 * deviation / image.diagonal)
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


# -- simulated vision-model proposals -------------------------------------------------------------
@dataclass(frozen=True)
class SimulatedProposal:
    image: EvalImage
    box: BoxPx


#: The simulation's default seed: the same proposals on every run.
SIMULATION_SEED = 20261128


def simulate_proposals(images: Iterable[EvalImage], sigma_pct: float, seed: int = SIMULATION_SEED) -> list[SimulatedProposal]:
    """For each lesion image: its first scored lesion's box, shifted by N(0, σ·diagonal) in x and
    y and with its size jittered by a log-normal factor (σ = 0.2), kept inside the image."""
    rng = random.Random(seed)
    proposals = []
    for image in images:
        lesions = image.scored_lesions()
        if not lesions:
            continue
        truth = lesions[0].box
        sigma = sigma_pct / 100.0 * image.diagonal
        cx, cy = truth.center
        cx = min(max(cx + rng.gauss(0.0, sigma), 0.0), image.width - 1.0)
        cy = min(max(cy + rng.gauss(0.0, sigma), 0.0), image.height - 1.0)
        width = max(3.0, truth.width * math.exp(rng.gauss(0.0, 0.2)))
        height = max(3.0, truth.height * math.exp(rng.gauss(0.0, 0.2)))
        proposals.append(SimulatedProposal(image, BoxPx.around(cx, cy, width, height).clipped(image.width, image.height)))
    return proposals


class SimulationScore(BaseModel):
    group: str
    n: int
    hit_before: float
    hit_after: float
    median_dev_before_pct: float
    median_dev_after_pct: float
    mean_dev_before_px: float
    mean_dev_after_px: float
    made_worse: float
    rejected: float
    good_rejected: float | None  # among proposals whose centre was inside a true box


def score_simulation(results: Sequence[tuple[SimulatedProposal, tuple[float, float], bool]],
                     worse_tolerance_pct: float = 1.0) -> list[SimulationScore]:
    """Before/after scores of verified proposals.

    ``results`` holds (proposal, refined centre, rejected?). A proposal is "made worse" when the
    refined centre is further from the nearest true centre by more than ``worse_tolerance_pct``
    of the diagonal, or it was inside a true box and no longer is. "Good rejected" is the share of
    proposals that landed on a lesion (centre inside a true box) which verification rejected:
    a rejection should mean the pixels contradict the proposal, so this should stay near zero.
    """
    groups: dict[str, list] = defaultdict(list)
    for item in results:
        groups[item[0].image.group].append(item)
        groups["all"].append(item)
    scores = []
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        rows = groups[name]
        before_hit, after_hit, before_dev, after_dev, worse, rejected, good_rejected = [], [], [], [], [], [], []
        for proposal, (x, y), was_rejected in rows:
            lesions = proposal.image.scored_lesions()
            cx, cy = proposal.box.center
            before = Prediction(cx, cy, 1.0)
            after = Prediction(x, y, 1.0)
            d0, d1 = _deviation(before, proposal.image, lesions), _deviation(after, proposal.image, lesions)
            h0, h1 = _hits([before], lesions, 1), _hits([after], lesions, 1)
            diag = proposal.image.diagonal
            before_hit.append(h0)
            after_hit.append(h1)
            before_dev.append((d0, 100 * d0 / diag))
            after_dev.append((d1, 100 * d1 / diag))
            worse.append((d1 - d0) > worse_tolerance_pct / 100 * diag or (h0 and not h1))
            rejected.append(was_rejected)
            if h0:
                good_rejected.append(was_rejected)
        scores.append(SimulationScore(
            group=name, n=len(rows),
            hit_before=statistics.fmean(before_hit), hit_after=statistics.fmean(after_hit),
            median_dev_before_pct=statistics.median(d[1] for d in before_dev),
            median_dev_after_pct=statistics.median(d[1] for d in after_dev),
            mean_dev_before_px=statistics.fmean(d[0] for d in before_dev),
            mean_dev_after_px=statistics.fmean(d[0] for d in after_dev),
            made_worse=statistics.fmean(worse), rejected=statistics.fmean(rejected),
            good_rejected=statistics.fmean(good_rejected) if good_rejected else None,
        ))
    return scores


def format_simulation(title: str, scores: Sequence[SimulationScore]) -> str:
    lines = [f"### {title}", "",
             ("| group | n | hit@1 before | hit@1 after | median dev before %diag | median dev after %diag | "
              "mean dev before px | mean dev after px | made worse | rejected | good rejected |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {s.group} | {s.n} | {s.hit_before:.2f} | {s.hit_after:.2f} | {s.median_dev_before_pct:.1f} | "
            f"{s.median_dev_after_pct:.1f} | {s.mean_dev_before_px:.1f} | {s.mean_dev_after_px:.1f} | "
            f"{s.made_worse:.2f} | {s.rejected:.2f} | "
            f"{'—' if s.good_rejected is None else format(s.good_rejected, '.2f')} |")
    return "\n".join(lines)
