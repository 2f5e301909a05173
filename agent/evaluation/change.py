"""The comparison with a prior, scored on (prior, current) pairs with a known truth
(``bench/make_longitudinal.py``): ``loupe eval --change PAIRS.csv [--cv K]``.

Per pair, as ``compare_with_prior`` does: the prior registered to the current image
(``tools.compare.registration``), the finding carried to the other study and looked for there
(``tools.compare_with_prior.carry``: ``look_for``, ``is_present``), both measured with their
uncertainty (``carry.lesion_size``), and the status decided by the change rule
(``tools.compare.change.status``) — or ``present`` when the lesion is there but one of the two
cannot be measured (the tool then gives no change either). The finding is the truth lesion,
given in the study it is in — the current image, or the prior for a ``resolved`` pair —, so that
the comparison is scored apart from detection (as ``loupe eval``'s size table is).

Figures per modality: the location error of the carried finding (its found centre against the
truth's place in the prior, % of the prior's diagonal; the carried centre when it was not found),
the relative error of the mean-diameter change (current / prior, against the truth's factor), and
the status accuracy; beside the trivial baselines — the identity transform instead of the
registration, and "always stable". Targets (issue 27): location ≤ 2 % of the diagonal, diameter
change ≤ 10 %, status accuracy ≥ 0.90.

The pairs are PNGs without pixel spacing; sizes are taken in the source image's nominal pixel
spacing (``NOMINAL_SPACING_MM``, what the collections state) for the current image, and that over
the registration's scale for the prior (the tool's ``per_px``), so the 1.5 mm growth minimum is
applied in millimetres.

Cross-validation (``--cv K``): the rule's tunable parameters (``Rule``: the presence rule's
contrast ratio, ``carry.PRESENT_MIN_CONTRAST_RATIO``, and the growth rule's ``UNCERTAINTY_K`` and
``RELATIVE_MIN``) are chosen on K−1 folds by a grid search (``GRID``) for the best status accuracy — on a tie,
the values nearest ``REFERENCE``, the rule as first designed — and the held-out fold is scored
with them. Folds are grouped by source image (the ``source`` column): a source's pairs are never
on both sides; within each dataset the sources, in name order, are dealt round-robin. What does
not depend on the parameters (the registration, the contrasts, the sizes) is computed once per
pair (``Observed``) and the statuses decided again per parameter value (``decide``). The
in-sample table is the parameters chosen on all pairs, scored on all pairs.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.evaluation.longitudinal import PAIR_FIELDS
from tools.compare.change import CLINICAL_MIN_MM, RELATIVE_MIN, UNCERTAINTY_K, LesionSize, status
from tools.compare.registration import Similarity, register_images
from tools.compare_with_prior.carry import PRESENT_MIN_CONTRAST_RATIO, is_present, lesion_contrast, lesion_size, look_for
from tools.coordinates import BoxPx
from tools.detection.working import WorkingImage, prepare
from tools.errors import LoupeError, RegistrationError

#: mm per px of each collection's images as the manifest gives them (LIDC: the series' own spacing
#: is 0.7–0.8 mm; figshare brain MR 0.49 mm; NIH ChestX-ray14 at 1024² about 0.42 mm; BUSI does not
#: say — 0.2 mm, a typical breast probe's).
NOMINAL_SPACING_MM = {"lidc_ct": 0.75, "figshare_brain_mri": 0.49, "nih_cxr14": 0.42, "busi": 0.2}
IDENTITY = Similarity(1.0, 0.0, 0.0, 0.0)
TARGETS = {"location_pct": 2.0, "diameter_change_error": 0.10, "status_accuracy": 0.90}
STATUSES = ("new", "grown", "shrunk", "stable", "resolved", "present")


@dataclass(frozen=True)
class Rule:
    """The comparison's tunable parameters; by default the shipped constants."""

    #: ``carry.is_present``: the share of its own contrast a lesion keeps where it is looked for.
    min_contrast_ratio: float = PRESENT_MIN_CONTRAST_RATIO
    #: ``change.status``: how many combined measurement uncertainties a change must exceed.
    k: float = UNCERTAINTY_K
    #: ``change.status``: the share of the prior's mean diameter a change must exceed.
    relative_min: float = RELATIVE_MIN


#: The values the cross-validation chooses among.
GRID = {"min_contrast_ratio": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7), "k": (1.0, 1.5, 2.0, 2.5, 3.0),
        "relative_min": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)}
#: The rule as first designed (no relative minimum): what a tie falls back to (fewest grid steps away).
REFERENCE = Rule(min_contrast_ratio=0.5, k=2.0, relative_min=0.0)


def grid_rules() -> list[Rule]:
    return [Rule(*values) for values in itertools.product(*GRID.values())]


def _steps(rule: Rule) -> tuple[int, int]:
    """How far ``rule`` is from ``REFERENCE``: parameters changed, then grid steps."""
    changed = steps = 0
    for name, values in GRID.items():
        here, there = getattr(rule, name), getattr(REFERENCE, name)
        if not math.isclose(here, there):
            changed += 1
            steps += abs(min(range(len(values)), key=lambda i: abs(values[i] - here))
                         - min(range(len(values)), key=lambda i: abs(values[i] - there)))
    return changed, steps


@dataclass(frozen=True)
class PairScore:
    modality: str
    truth: str
    predicted: str
    registered: bool
    location_pct: float | None
    diameter_change_error: float | None


@dataclass(frozen=True)
class Observed:
    """One pair with one transform: all that does not depend on the ``Rule``."""

    modality: str
    truth: str
    registered: bool
    #: The lesion's contrast in the study it is given in, and where it is looked for in the other.
    contrast_here: float
    contrast_there: float
    #: The lesion measured in the study it is given in (mm, with its uncertainty); None when it
    #: cannot be segmented.
    here: LesionSize | None
    #: Measured at the centre it is looked for in the other study (used only when present there).
    there: LesionSize | None
    #: Location error (% of the prior's diagonal) of the looked-for centre, and of the carried
    #: one (used when the lesion is judged absent); None for ``new`` and ``resolved`` pairs.
    found_pct: float | None
    carried_pct: float | None
    #: Current size over prior size, the truth's; None when the lesion is in one study only.
    factor: float | None
    source: str = ""


def decide(seen: Observed, rule: Rule = Rule()) -> PairScore:
    """The pair's status and figures under ``rule``, as ``compare_with_prior`` would give them."""
    present = is_present(seen.contrast_there, seen.contrast_here, rule.min_contrast_ratio)
    location = seen.found_pct if present else seen.carried_pct
    if seen.truth == "resolved":  # the finding is the prior's: looked for in the current image
        before, now, absent = seen.here, seen.there, "resolved"
    else:
        before, now, absent = seen.there, seen.here, "new"
    change_error = None
    if not present:
        predicted = absent
    elif before is None or now is None:
        predicted = "present"
    else:
        predicted = status(before, now, CLINICAL_MIN_MM, k=rule.k, relative=rule.relative_min)
        if seen.factor is not None:
            change_error = abs((now.mean_mm / before.mean_mm) / seen.factor - 1)
    return PairScore(seen.modality, seen.truth, predicted, seen.registered, location, change_error)


def _image(folder: Path, name: str, low: float, high: float) -> np.ndarray:
    with Image.open(folder / name) as image:
        scaled = np.asarray(image, dtype=np.float64) / 65535.0
    return low + scaled * (high - low)


def _scaled(size: LesionSize | None, factor: float) -> LesionSize | None:
    """A size measured in px (``lesion_size`` with ``per_px=1``), in the unit of ``factor`` per px
    (``lesion_size`` is linear in ``per_px``, so this is the same as measuring with it)."""
    if size is None:
        return None
    return LesionSize(size.long_mm * factor, size.short_mm * factor, size.uncertainty_mm * factor)


@dataclass(frozen=True)
class _Pair:
    """A pair read and prepared once, for every transform it is scored with."""

    row: dict[str, str]
    current: np.ndarray
    prior: np.ndarray
    current_work: WorkingImage
    prior_work: WorkingImage
    truth: Similarity
    spacing: float


def _read(row: dict[str, str], folder: Path) -> _Pair:
    low, high, modality = float(row["low"]), float(row["high"]), row["modality"]
    current, prior = _image(folder, row["current"], low, high), _image(folder, row["prior"], low, high)
    truth = Similarity(float(row["scale"]), float(row["rotation_deg"]), float(row["shift_x"]), float(row["shift_y"]))
    return _Pair(row, current, prior, prepare(current.astype(np.float32), modality),
                 prepare(prior.astype(np.float32), modality), truth, NOMINAL_SPACING_MM.get(row["dataset"], 1.0))


def observe_pair(row: dict[str, str], folder: Path) -> tuple[Observed, Observed]:
    """One pair observed with the transform its registration finds (the identity when it is
    refused), and with the identity transform (the baseline)."""
    pair = _read(row, folder)
    try:
        transform, registered = register_images(pair.current, pair.prior).transform, True
    except RegistrationError:
        transform, registered = IDENTITY, False
    x, y, r = float(row["lesion_x"]), float(row["lesion_y"]), float(row["lesion_radius"])
    if row["status"] == "resolved":  # the lesion is the prior's, at the truth's place there
        where, radius = pair.truth.apply(x, y), r * pair.truth.scale
        own, other = pair.prior_work, pair.current_work
    else:
        where, radius, own, other = (x, y), r, pair.current_work, pair.prior_work
    contrast = lesion_contrast(own, where, radius)
    size_px = lesion_size(own, where, None)
    return (_observed(pair, transform, registered, where, radius, contrast, size_px),
            _observed(pair, IDENTITY, True, where, radius, contrast, size_px))


def _observed(pair: _Pair, transform: Similarity, registered: bool, where: tuple[float, float], radius: float,
              contrast: float, size_px: LesionSize | None) -> Observed:
    row, spacing = pair.row, pair.spacing
    resolved = row["status"] == "resolved"
    prior_per_px = spacing / transform.scale  # the tool's per_px = 1 / scale, here times the nominal spacing
    box = BoxPx.around(*where, 2 * radius, 2 * radius)
    if resolved:  # carried back from the prior to the current image
        look = look_for(pair.current_work, box, transform.inverse(), None)
        here, there = _scaled(size_px, prior_per_px), _scaled(lesion_size(pair.current_work, look.centre, None), spacing)
    else:
        look = look_for(pair.prior_work, box, transform, None)
        here, there = _scaled(size_px, spacing), _scaled(lesion_size(pair.prior_work, look.centre, None), prior_per_px)
    found = carried = None
    if row["status"] not in ("new", "resolved"):
        truth_there, diagonal = pair.truth.apply(*where), math.hypot(*pair.prior.shape)
        found = math.dist(look.centre, truth_there) / diagonal * 100
        carried = math.dist(look.carried.center, truth_there) / diagonal * 100
    return Observed(row["modality"], row["status"], registered, contrast, look.contrast, here, there, found, carried,
                    float(row["factor"]) if row["factor"] else None, row.get("source", ""))


def score_pair(row: dict[str, str], folder: Path, rule: Rule = Rule()) -> tuple[PairScore, PairScore]:
    """One pair scored with the transform its registration finds (the identity when it is
    refused), and with the identity transform (the baseline), under ``rule``."""
    registered, identity = observe_pair(row, folder)
    return decide(registered, rule), decide(identity, rule)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summary(scores: list[PairScore], baseline: list[PairScore]) -> dict[str, Any]:
    located = [s.location_pct for s in scores if s.location_pct is not None]
    changes = [s.diameter_change_error for s in scores if s.diameter_change_error is not None]
    return {
        "pairs": len(scores),
        "registered": sum(s.registered for s in scores),
        "location_pct_median": _median(located),
        "location_pct_identity": _median([s.location_pct for s in baseline if s.location_pct is not None]),
        "diameter_change_error_median": _median(changes),
        "measured_changes": len(changes),
        "status_accuracy": sum(s.predicted == s.truth for s in scores) / len(scores),
        "status_accuracy_identity": sum(s.predicted == s.truth for s in baseline) / len(baseline),
        "status_accuracy_always_stable": sum(s.truth == "stable" for s in scores) / len(scores),
    }


def _figures(scored: list[tuple[PairScore, PairScore]]) -> dict[str, Any]:
    """Per modality and overall, and the confusion of statuses, of (registered, identity) scores."""
    by_modality: dict[str, tuple[list[PairScore], list[PairScore]]] = defaultdict(lambda: ([], []))
    for registered, identity in scored:
        by_modality[registered.modality][0].append(registered)
        by_modality[registered.modality][1].append(identity)
    data = {modality: _summary(*pair) for modality, pair in sorted(by_modality.items())}
    data["all"] = _summary([s for s, _ in scored], [b for _, b in scored])
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for score, _ in scored:
        confusion[score.truth][score.predicted] += 1
    return {"by_modality": data, "confusion": {k: dict(v) for k, v in confusion.items()}}


def accuracy(observed: Sequence[tuple[Observed, Observed]], rule: Rule) -> float:
    """Status accuracy of the registered comparison under ``rule``."""
    return sum(decide(seen, rule).predicted == seen.truth for seen, _ in observed) / len(observed)


def choose(observed: Sequence[tuple[Observed, Observed]]) -> tuple[Rule, float]:
    """The grid's rule with the best status accuracy on ``observed``; on a tie, the nearest ``REFERENCE``."""
    scored = [(accuracy(observed, rule), rule) for rule in grid_rules()]
    best = max(score for score, _ in scored)
    return min((rule for score, rule in scored if score == best), key=_steps), best


def folds_by_source(rows: Sequence[dict[str, str]], k: int) -> dict[str, int]:
    """Each source image's fold: within each dataset, the sources in name order dealt round-robin."""
    by_dataset: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_dataset[row["dataset"]].add(row["source"])
    return {source: index % k for sources in by_dataset.values() for index, source in enumerate(sorted(sources))}


def _decided(observed: Sequence[tuple[Observed, Observed]], rule: Rule) -> list[tuple[PairScore, PairScore]]:
    return [(decide(seen, rule), decide(baseline, rule)) for seen, baseline in observed]


def cross_validate(rows: Sequence[dict[str, str]], observed: Sequence[tuple[Observed, Observed]],
                   k: int) -> dict[str, Any]:
    """The in-sample and ``k``-fold cross-validated figures, and the parameters each fold chose."""
    folds = folds_by_source(rows, k)
    in_sample_rule, in_sample_accuracy = choose(observed)
    held_out: list[tuple[PairScore, PairScore]] = []
    chosen = []
    for fold in range(k):
        train = [o for row, o in zip(rows, observed, strict=True) if folds[row["source"]] != fold]
        test = [o for row, o in zip(rows, observed, strict=True) if folds[row["source"]] == fold]
        if not test or not train:
            continue
        rule, train_accuracy = choose(train)
        scores = _decided(test, rule)
        held_out += scores
        chosen.append({"fold": fold, "parameters": asdict(rule), "train_pairs": len(train), "test_pairs": len(test),
                       "test_sources": sum(1 for f in folds.values() if f == fold),
                       "train_status_accuracy": train_accuracy,
                       "test_status_accuracy": sum(s.predicted == s.truth for s, _ in scores) / len(scores)})
    return {"folds": k, "grouped_by": "source", "grid": {name: list(values) for name, values in GRID.items()},
            "reference": asdict(REFERENCE), "fold_parameters": chosen,
            "in_sample": {"parameters": asdict(in_sample_rule), "status_accuracy": in_sample_accuracy,
                          **_figures(_decided(observed, in_sample_rule))},
            "cross_validated": _figures(held_out)}


def _rows(pairs_csv: Path) -> list[dict[str, str]]:
    with pairs_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        missing = sorted(set(PAIR_FIELDS) - set(reader.fieldnames or ()))
    if missing or not rows:
        raise LoupeError(f"'{pairs_csv}' is not a pairs manifest of bench/make_longitudinal.py "
                         f"({'missing ' + ', '.join(missing) if missing else 'no pairs'}).")
    return rows


def run_change_eval(pairs_csv: Path, cv: int | None = None) -> tuple[str, dict[str, Any]]:
    """The table of the module (text) and its figures (JSON-ready), per modality and overall,
    with the shipped parameters; with ``cv`` also the in-sample and ``cv``-fold cross-validated
    tables and the parameters chosen (``cross_validate``)."""
    rows = _rows(pairs_csv)
    if cv is not None:
        sources = len({row["source"] for row in rows})
        if not 2 <= cv <= sources:
            raise LoupeError(f"--cv takes from 2 folds to as many as there are source images ({sources}).")
    observed = [observe_pair(row, pairs_csv.parent) for row in rows]
    shipped = Rule()
    data = {**_figures(_decided(observed, shipped)), "targets": TARGETS, "parameters": asdict(shipped)}
    if cv is None:
        return _table(data, f"shipped parameters: {_rule_text(shipped)}"), data
    data["cv"] = cross_validate(rows, observed, cv)
    return _cv_text(data, shipped), data


def _rule_text(rule: Rule | dict[str, float]) -> str:
    values = asdict(rule) if isinstance(rule, Rule) else rule
    return ", ".join(f"{name} {value:g}" for name, value in values.items())


def _cv_text(data: dict[str, Any], shipped: Rule) -> str:
    result = data["cv"]
    k, chosen = result["folds"], result["in_sample"]["parameters"]
    parts = []
    if chosen != asdict(shipped):
        parts.append(_table(data, f"shipped parameters: {_rule_text(shipped)}"))
    parts.append(_table(result["in_sample"], f"in-sample: parameters chosen on all {data['by_modality']['all']['pairs']} "
                                             f"pairs ({_rule_text(chosen)}) and scored on them"))
    parts.append(_table(result["cross_validated"], f"{k}-fold cross-validated: parameters chosen on the other "
                                                   f"{k - 1} folds, folds grouped by source image"))
    grid = ", ".join(f"{name} {' / '.join(f'{v:g}' for v in values)}" for name, values in result["grid"].items())
    lines = [f"Parameters chosen per fold (grid: {grid}; ties → nearest {_rule_text(result['reference'])}):"]
    lines += [f"- fold {c['fold']}: {_rule_text(c['parameters'])} (train {c['train_pairs']} pairs, accuracy "
              f"{c['train_status_accuracy']:.2f}; held out {c['test_pairs']} pairs from {c['test_sources']} sources, "
              f"accuracy {c['test_status_accuracy']:.2f})" for c in result["fold_parameters"]]
    return "\n\n".join([*parts, "\n".join(lines)])


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(figures: dict[str, Any], title: str) -> str:
    data, confusion = figures["by_modality"], figures["confusion"]
    lines = [f"Comparison with a prior on pairs with a known truth, {title} (targets: location ≤ 2 % of the "
             "diagonal, diameter change ≤ 10 %, status accuracy ≥ 0.90)", "",
             "| modality | pairs | registered | location % median | (identity) | diameter-change error median "
             "| status accuracy | (identity) | (always stable) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for modality, d in data.items():
        error = d["diameter_change_error_median"]
        lines.append(f"| {modality} | {d['pairs']} | {d['registered']} | {_f(d['location_pct_median'])} | "
                     f"{_f(d['location_pct_identity'])} | {_f(None if error is None else error * 100, 1)} % "
                     f"(n={d['measured_changes']}) | {d['status_accuracy']:.2f} | {d['status_accuracy_identity']:.2f} | "
                     f"{d['status_accuracy_always_stable']:.2f} |")
    statuses = [s for s in STATUSES if s != "present" or any("present" in row for row in confusion.values())]
    lines += ["", "Status, truth (rows) against Loupe's (columns):", "",
              "| truth | " + " | ".join(statuses) + " |", "|---|" + "---:|" * len(statuses)]
    for truth in STATUSES[:5]:
        row = confusion.get(truth, {})
        lines.append(f"| {truth} | " + " | ".join(str(row.get(s, 0)) for s in statuses) + " |")
    return "\n".join(lines)
