"""k-fold cross-validation of what the detector tuned on the development images.

Two things were chosen by looking at the dev images: the modality rules of the scores
(``tools.detection.scoring.Rules``: each written for a handful of images) and the confidence
calibration. On every fold, both are chosen again on the other k−1 folds only, as a developer
would have chosen them had the fold not existed:

- for each modality family, the set of its rules that ranks best on the training images (hit@1,
  then hit@3; on a tie, the set with fewer rules on: a rule has to earn its place);
- the calibration, refitted on the training images' top candidates under that rule set;

and the held-out fold is scored with them. Images outside what the detector is built for (an
abdominal MR, say: ``tools.detection.working.outside_competence``) choose no rules and fit no
calibration — the app caps their confidence below the threshold, and so does the scoring here. The cross-validated table beside the in-sample one
(the shipped rules and calibration on all images) shows what the tuning is worth on images it
did not see. Folds are stratified by dataset (images in path order, dealt round-robin).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from agent.evaluation.calibration import TOP_CANDIDATES, calibrated, fit_calibration
from agent.evaluation.manifest import EvalImage
from agent.evaluation.scoring import GroupScore, Prediction, failure_line, hits, score
from tools.detection.detector import REVIEW_CAP, Detection, detect_on_work
from tools.detection.evidence import ScaleSpace
from tools.detection.performance import image_kind
from tools.detection.scoring import ANOMALY_THRESHOLD, CALIBRATION, RULES, Rules, modality_family
from tools.detection.working import prepare_study_frame
from tools.study import StudyLimits, open_study

#: Detections kept per image and rule set (enough for hit@3 and the calibration's top five).
KEPT = 10


@dataclass
class ImageRuns:
    """One image's ranked detections under every rule set of its modality family."""

    image: EvalImage
    family: str
    by_rules: dict[Rules, list[Detection]]
    #: The kind of image as the detector classified it (``tools.detection.performance``); None
    #: outside its competence (or when the image could not be read).
    kind: str | None = None


@dataclass
class CrossValidation:
    """The in-sample and cross-validated scores, and which rule sets the folds chose."""

    in_sample: list[GroupScore]
    cross_validated: list[GroupScore]
    #: family -> one line per rule set: its switches, dev hit@1, and how many folds chose it.
    rule_choices: dict[str, list[str]]
    folds: int
    #: Each image's predictions under the rules and calibration of the folds it was held out of.
    held_out: dict[Path, list[Prediction]]
    #: Each image's predictions under the shipped rules and calibration.
    shipped: dict[Path, list[Prediction]]


def rule_sets(family: str) -> list[Rules]:
    """Every combination of the family's rules (the others as shipped), all-on first."""
    names = Rules.names(family)
    combos = itertools.product((True, False), repeat=len(names))
    return [replace(RULES, **dict(zip(names, combo, strict=True))) for combo in combos] or [RULES]


def fold_of(images: Sequence[EvalImage], k: int) -> dict[Path, int]:
    """Each image's fold: within each dataset, images in path order dealt round-robin."""
    by_dataset: dict[str, list[EvalImage]] = defaultdict(list)
    for image in images:
        by_dataset[image.dataset].append(image)
    folds = {}
    for members in by_dataset.values():
        for index, image in enumerate(sorted(members, key=lambda i: str(i.path))):
            folds[image.path] = index % k
    return folds


def analyse(images: Sequence[EvalImage], limits: StudyLimits) -> tuple[list[ImageRuns], list[str]]:
    """Detect on each image under each rule set of its family (one scale space per image);
    images that cannot be analysed are listed and left out of the runs."""
    runs, problems = [], []
    for image in images:
        family = modality_family(image.modality)
        kind = None
        try:
            with open_study(image.path, limits=limits, modality=image.modality) as study:
                work = prepare_study_frame(study, 0)
            space = ScaleSpace(work)
            by_rules = {rules: detect_on_work(work, 0, KEPT, space, rules=rules) for rules in rule_sets(family)}
            kind = image_kind(work)
        except Exception as error:  # as in benchmark: one image never ends the run
            problems.append(failure_line(image, error))
            by_rules = {rules: [] for rules in rule_sets(family)}
        runs.append(ImageRuns(image, family, by_rules, None if kind is None else kind.key))
    return runs, problems


def _rank_quality(runs: Sequence[ImageRuns], rules: Rules) -> tuple[float, float]:
    """(hit@1, hit@3) summed over the lesion images of ``runs`` under ``rules``."""
    top1 = top3 = 0.0
    for run in runs:
        lesions = run.image.scored_lesions()
        if not lesions:
            continue
        ranked = [Prediction(d.x, d.y, d.confidence) for d in run.by_rules[rules]]
        top1 += hits(ranked, lesions, 1)
        top3 += hits(ranked, lesions, 3)
    return top1, top3


def choose_rules(runs: Sequence[ImageRuns], family: str) -> Rules:
    """The family's best-ranking rule set on ``runs``; on a tie, the one with fewer rules on."""
    names = Rules.names(family)
    return max(rule_sets(family),
               key=lambda rules: (*_rank_quality(runs, rules), -sum(getattr(rules, n) for n in names)))


def calibration_samples(runs: Sequence[ImageRuns], rules: Rules) -> list[tuple[float, bool]]:
    """(score, hit) of the top candidates of every image within the detector's competence."""
    return [(d.score, any(lesion.box.contains(d.x, d.y) for lesion in run.image.scored_lesions()))
            for run in runs if run.kind is not None for d in run.by_rules[rules][:TOP_CANDIDATES]]


def _calibration(runs: Sequence[ImageRuns], rules: Rules, family: str) -> tuple[float, float]:
    return fit_calibration(calibration_samples(runs, rules)) or CALIBRATION[family]


def _predictions(run: ImageRuns, rules: Rules, calibration: tuple[float, float]) -> list[Prediction]:
    """Ranked predictions with the confidence the app would show (capped below the threshold
    outside the detector's competence, as ``tools.detection.detector`` does)."""
    cap = 1.0 if run.kind is not None else REVIEW_CAP
    return [Prediction(d.x, d.y, min(calibrated(d.score, *calibration), cap)) for d in run.by_rules[rules]]


def cross_validate(runs: Sequence[ImageRuns], k: int) -> CrossValidation:
    """Score ``runs`` in-sample and by ``k``-fold cross-validation (see the module)."""
    images = [run.image for run in runs]
    folds = fold_of(images, k)
    families = sorted({run.family for run in runs})
    in_sample = {run.image.path: _predictions(run, RULES, CALIBRATION[run.family]) for run in runs}
    held_out: dict[Path, list[Prediction]] = {}
    chosen: dict[str, list[Rules]] = defaultdict(list)
    for fold in range(k):
        train = [run for run in runs if folds[run.image.path] != fold]
        for family in families:
            family_train = [run for run in train if run.family == family and run.kind is not None]
            rules = choose_rules(family_train, family)
            calibration = _calibration(family_train, rules, family)
            chosen[family].append(rules)
            for run in runs:
                if run.family == family and folds[run.image.path] == fold:
                    held_out[run.image.path] = _predictions(run, rules, calibration)
    return CrossValidation(in_sample=score(images, in_sample, ANOMALY_THRESHOLD),
                           cross_validated=score(images, held_out, ANOMALY_THRESHOLD),
                           rule_choices=_rule_report(runs, chosen), folds=k, held_out=held_out,
                           shipped=in_sample)


def _rule_report(runs: Sequence[ImageRuns], chosen: dict[str, list[Rules]]) -> dict[str, list[str]]:
    report = {}
    for family, picks in sorted(chosen.items()):
        names = Rules.names(family)
        if not names:
            continue
        members = [run for run in runs if run.family == family]
        lesion_images = sum(1 for run in members if run.image.scored_lesions())
        lines = []
        for rules in rule_sets(family):
            on = [n for n in names if getattr(rules, n)] or ["none"]
            top1, _ = _rank_quality(members, rules)
            shipped = " (shipped)" if all(getattr(rules, n) == getattr(RULES, n) for n in names) else ""
            lines.append(f"{', '.join(on)}{shipped}: dev hit@1 {top1 / max(lesion_images, 1):.2f}, "
                         f"chosen by {picks.count(rules)} of {len(picks)} folds")
        report[family] = lines
    return report
