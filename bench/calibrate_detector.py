"""Refit the detector's confidence calibration on a manifest (default: the shared dev set).

For every image, the detector's five best candidates are labelled hit / miss (centre inside a
lesion box), and per modality family a one-feature logistic model
``P(hit) = 1 / (1 + exp(-(a·ln(score) + b)))`` is fitted by Newton's method with a small ridge.
It prints the constants for ``tools.detection.scoring.CALIBRATION`` and, for normal images, the
highest confidence the detector gives (what drives the false-positive rate at the threshold).

Run: ``.venv/bin/python bench/calibrate_detector.py [MANIFEST.csv]``.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.manifest import read_manifest  # noqa: E402
from tools.detection.detector import detect_frame  # noqa: E402
from tools.detection.scoring import CALIBRATION, _family  # noqa: E402
from tools.study import open_study  # noqa: E402

TOP = 5


def _fit(features: np.ndarray, labels: np.ndarray, ridge: float = 0.01) -> tuple[float, float]:
    weights = np.zeros(2)
    design = np.column_stack([features, np.ones_like(features)])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - labels) + ridge * weights
        hessian = (design.T * (p * (1 - p))) @ design + ridge * np.eye(2)
        weights -= np.linalg.solve(hessian, gradient)
    return float(weights[0]), float(weights[1])


def main() -> None:
    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "eval" / "manifest.csv"
    samples: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    normal_tops: dict[str, list[float]] = defaultdict(list)
    for image in read_manifest(manifest):
        with open_study(image.path, modality=image.modality) as study:
            detections = detect_frame(study, 0, limit=TOP)
        family = _family(image.modality)
        lesions = image.scored_lesions()
        for detection in detections:
            hit = any(lesion.box.contains(detection.x, detection.y) for lesion in lesions)
            samples[family].append((math.log(max(detection.score, 1e-6)), hit))
        if not lesions and detections:
            normal_tops[family].append(detections[0].confidence)
    print("| family | candidates | hits | a | b | current a, b | top confidence on normal images |")
    print("|---|---:|---:|---:|---:|---|---|")
    for family, rows in sorted(samples.items()):
        features = np.array([r[0] for r in rows])
        labels = np.array([float(r[1]) for r in rows])
        a, b = _fit(features, labels) if labels.any() else (float("nan"), float("nan"))
        tops = ", ".join(f"{c:.2f}" for c in normal_tops.get(family, [])) or "—"
        print(f"| {family} | {len(rows)} | {int(labels.sum())} | {a:.3f} | {b:.3f} | {CALIBRATION[family]} | {tops} |")


if __name__ == "__main__":
    main()
