"""The comparison with a prior, scored on (prior, current) pairs with a known truth
(``bench/make_longitudinal.py``): ``loupe eval --change PAIRS.csv``.

Per pair, as ``compare_with_prior`` will: the prior registered to the current image
(``tools.compare.registration``), the finding carried to the other study and looked for there
(``tools.compare_with_prior.carry``), both measured, and the status decided by the change rule
(``tools.compare.change``). The finding is the truth lesion, given in the study it is in — the
current image, or the prior for a ``resolved`` pair —, so that the comparison is scored apart
from detection (as ``loupe eval``'s size table is).

Figures per modality: the location error of the carried finding (its found centre against the
truth's place in the prior, % of the prior's diagonal; the carried centre when it was not found),
the relative error of the mean-diameter change (current / prior, against the truth's factor), and
the status accuracy; beside the trivial baselines — the identity transform instead of the
registration, and "always stable". Targets (issue 27): location ≤ 2 % of the diagonal, diameter
change ≤ 10 %, status accuracy ≥ 0.90.

The pairs are PNGs without pixel spacing; sizes are taken in the source image's nominal pixel
spacing (``NOMINAL_SPACING_MM``, what the collections state) for the current image, and that over
the registration's scale for the prior, so the 1.5 mm growth minimum is applied in millimetres.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.evaluation.longitudinal import PAIR_FIELDS
from tools.compare.change import LesionSize, status
from tools.compare.registration import Similarity, register_images
from tools.compare_with_prior.carry import carry_to_prior, lesion_contrast
from tools.coordinates import BoxPx
from tools.detection.working import WorkingImage, prepare
from tools.errors import LoupeError, RegistrationError
from tools.measure.diameters import Diameters
from tools.measure.segmentation import measure_lesion, settings_for

#: mm per px of each collection's images as the manifest gives them (LIDC: the series' own spacing
#: is 0.7–0.8 mm; figshare brain MR 0.49 mm; NIH ChestX-ray14 at 1024² about 0.42 mm; BUSI does not
#: say — 0.2 mm, a typical breast probe's).
NOMINAL_SPACING_MM = {"lidc_ct": 0.75, "figshare_brain_mri": 0.49, "nih_cxr14": 0.42, "busi": 0.2}
IDENTITY = Similarity(1.0, 0.0, 0.0, 0.0)
TARGETS = {"location_pct": 2.0, "diameter_change_error": 0.10, "status_accuracy": 0.90}


@dataclass(frozen=True)
class PairScore:
    modality: str
    truth: str
    predicted: str
    registered: bool
    location_pct: float | None
    diameter_change_error: float | None


def _image(folder: Path, name: str, low: float, high: float) -> np.ndarray:
    with Image.open(folder / name) as image:
        scaled = np.asarray(image, dtype=np.float64) / 65535.0
    return low + scaled * (high - low)


def _mm(size: Diameters | None, spacing: float) -> LesionSize | None:
    return None if size is None else LesionSize(size.long * spacing, size.short * spacing)


def _measured(work: WorkingImage, center: tuple[float, float], spacing: float) -> LesionSize | None:
    """The lesion at ``center`` measured in its own study, where the truth puts it."""
    return _mm(measure_lesion(work, center, None, settings_for(work.modality)), spacing)


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


def score_pair(row: dict[str, str], folder: Path) -> tuple[PairScore, PairScore]:
    """One pair scored with the transform its registration finds (the identity when it is
    refused), and with the identity transform (the baseline)."""
    pair = _read(row, folder)
    try:
        transform, registered = register_images(pair.current, pair.prior).transform, True
    except RegistrationError:
        transform, registered = IDENTITY, False
    return _scored(pair, transform, registered), _scored(pair, IDENTITY, True)


def _scored(pair: _Pair, transform: Similarity, registered: bool) -> PairScore:
    """The pair with ``transform`` (current → prior)."""
    row, truth, spacing = pair.row, pair.truth, pair.spacing
    modality, x, y, r = row["modality"], float(row["lesion_x"]), float(row["lesion_y"]), float(row["lesion_radius"])
    prior_spacing = spacing / transform.scale
    if row["status"] == "resolved":  # the finding is the prior's: carried back to the current image
        where = truth.apply(x, y)
        back = carry_to_prior(pair.current_work, BoxPx.around(*where, 2 * r * truth.scale, 2 * r * truth.scale),
                              transform.inverse(), None,
                              contrast_here=lesion_contrast(pair.prior_work, where, r * truth.scale))
        before = _measured(pair.prior_work, where, prior_spacing)
        now = _mm(back.size, spacing) if back.present else None
        predicted = status(before, now) if before is not None or now is not None else "resolved"
        return PairScore(modality, "resolved", predicted, registered, None, None)
    carried = carry_to_prior(pair.prior_work, BoxPx.around(x, y, 2 * r, 2 * r), transform, None,
                             contrast_here=lesion_contrast(pair.current_work, (x, y), r))
    now = _measured(pair.current_work, (x, y), spacing)
    before = _mm(carried.size, prior_spacing) if carried.present else None
    predicted = status(before, now) if before is not None or now is not None else "new"
    location = None
    if row["status"] != "new":
        found = carried.center_px if carried.present else carried.carried.center
        location = math.dist(found, truth.apply(x, y)) / math.hypot(*pair.prior.shape) * 100
    change_error = None
    if row["factor"] and row["status"] != "new" and before is not None and now is not None:
        change_error = abs((now.mean_mm / before.mean_mm) / float(row["factor"]) - 1)
    return PairScore(modality, row["status"], predicted, registered, location, change_error)


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


def run_change_eval(pairs_csv: Path) -> tuple[str, dict[str, Any]]:
    """The table of the module (text) and its figures (JSON-ready), per modality and overall."""
    with pairs_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        missing = sorted(set(PAIR_FIELDS) - set(reader.fieldnames or ()))
    if missing or not rows:
        raise LoupeError(f"'{pairs_csv}' is not a pairs manifest of bench/make_longitudinal.py "
                         f"({'missing ' + ', '.join(missing) if missing else 'no pairs'}).")
    folder = pairs_csv.parent
    by_modality: dict[str, tuple[list[PairScore], list[PairScore]]] = defaultdict(lambda: ([], []))
    for row in rows:
        scored, baseline = by_modality[row["modality"]]
        registered, identity = score_pair(row, folder)
        scored.append(registered)
        baseline.append(identity)
    data = {modality: _summary(*pair) for modality, pair in sorted(by_modality.items())}
    everything = ([s for pair in by_modality.values() for s in pair[0]],
                  [s for pair in by_modality.values() for s in pair[1]])
    data["all"] = _summary(*everything)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for score in everything[0]:
        confusion[score.truth][score.predicted] += 1
    return _table(data, confusion), {"by_modality": data, "confusion": {k: dict(v) for k, v in confusion.items()},
                                     "targets": TARGETS}


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(data: dict[str, dict[str, Any]], confusion: dict[str, dict[str, int]]) -> str:
    lines = ["Comparison with a prior on pairs with a known truth (targets: location ≤ 2 % of the diagonal, "
             "diameter change ≤ 10 %, status accuracy ≥ 0.90)", "",
             "| modality | pairs | registered | location % median | (identity) | diameter-change error median "
             "| status accuracy | (identity) | (always stable) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for modality, d in data.items():
        error = d["diameter_change_error_median"]
        lines.append(f"| {modality} | {d['pairs']} | {d['registered']} | {_f(d['location_pct_median'])} | "
                     f"{_f(d['location_pct_identity'])} | {_f(None if error is None else error * 100, 1)} % "
                     f"(n={d['measured_changes']}) | {d['status_accuracy']:.2f} | {d['status_accuracy_identity']:.2f} | "
                     f"{d['status_accuracy_always_stable']:.2f} |")
    statuses = ("new", "grown", "shrunk", "stable", "resolved")
    lines += ["", "Status, truth (rows) against Loupe's (columns):", "",
              "| truth | " + " | ".join(statuses) + " |", "|---|" + "---:|" * len(statuses)]
    for truth in statuses:
        row = confusion.get(truth, {})
        lines.append(f"| {truth} | " + " | ".join(str(row.get(s, 0)) for s in statuses) + " |")
    return "\n".join(lines)
