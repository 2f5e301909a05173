"""Fitting the detector's confidence calibration: per modality family, a one-feature logistic
model ``P(hit) = 1 / (1 + exp(-(a·ln(score) + b)))`` over the top candidates of every image,
labelled hit or miss (centre inside a lesion box), by Newton's method with a small ridge.

``bench/calibrate_detector.py`` prints the constants for ``tools.detection.scoring.CALIBRATION``;
``agent.evaluation.crossval`` refits them on each fold's training images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

#: Candidates per image the calibration is fitted on.
TOP_CANDIDATES = 5


def fit_calibration(samples: Iterable[tuple[float, bool]], ridge: float = 0.01) -> tuple[float, float] | None:
    """(a, b) from (score, hit) pairs; None when there is no hit to learn from."""
    pairs = list(samples)
    labels = np.array([float(hit) for _, hit in pairs])
    if not labels.any():
        return None
    features = np.array([math.log(max(score, 1e-6)) for score, _ in pairs])
    design = np.column_stack([features, np.ones_like(features)])
    weights = np.zeros(2)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - labels) + ridge * weights
        hessian = (design.T * (p * (1 - p))) @ design + ridge * np.eye(2)
        weights -= np.linalg.solve(hessian, gradient)
    return float(weights[0]), float(weights[1])


def calibrated(score: float, a: float, b: float) -> float:
    """The confidence of a candidate with ``score`` under the calibration (a, b)."""
    t = a * math.log(max(score, 1e-6)) + b
    return 1.0 / (1.0 + math.exp(-max(min(t, 40.0), -40.0)))
