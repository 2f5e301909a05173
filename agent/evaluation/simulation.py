"""Simulated vision-model proposals: a lesion's box shifted and resized at random, then verified
against the pixels, to measure what verification does to a model's proposals."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from agent.evaluation.manifest import EvalImage
from agent.evaluation.scoring import Prediction, deviation, hits
from tools.coordinates import BoxPx


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
            d0, d1 = deviation(before, proposal.image, lesions), deviation(after, proposal.image, lesions)
            h0, h1 = hits([before], lesions, 1), hits([after], lesions, 1)
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
