"""Refit the detector's confidence calibration on a manifest (default: the shared dev set).

For every image the detector is built for (images outside its competence, such as an abdominal
MR, are capped below the threshold by the app and left out here, as in ``loupe eval --cv``), the
detector's five best candidates are labelled hit / miss (centre inside a lesion box), and per
modality family a one-feature logistic model
``P(hit) = 1 / (1 + exp(-(a·ln(score) + b)))`` is fitted by Newton's method with a small ridge.
It prints the constants for ``tools.detection.scoring.CALIBRATION`` and, for normal images, the
highest confidence the detector gives (what drives the false-positive rate at the threshold).

Run: ``.venv/bin/python bench/calibrate_detector.py [MANIFEST.csv]``.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.calibration import TOP_CANDIDATES, fit_calibration  # noqa: E402
from agent.evaluation.manifest import read_manifest  # noqa: E402
from tools.detection.detector import detect_on_work  # noqa: E402
from tools.detection.performance import image_kind  # noqa: E402
from tools.detection.scoring import CALIBRATION, modality_family  # noqa: E402
from tools.detection.working import prepare_study_frame  # noqa: E402
from tools.study import open_study  # noqa: E402

def main() -> None:
    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "eval" / "manifest.csv"
    samples: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    normal_tops: dict[str, list[float]] = defaultdict(list)
    for image in read_manifest(manifest):
        with open_study(image.path, modality=image.modality) as study:
            work = prepare_study_frame(study, 0)
        if image_kind(work) is None:
            continue
        detections = detect_on_work(work, 0, limit=TOP_CANDIDATES)
        family = modality_family(image.modality)
        lesions = image.scored_lesions()
        for detection in detections:
            hit = any(lesion.box.contains(detection.x, detection.y) for lesion in lesions)
            samples[family].append((detection.score, hit))
        if not lesions and detections:
            normal_tops[family].append(detections[0].confidence)
    print("| family | candidates | hits | a | b | current a, b | top confidence on normal images |")
    print("|---|---:|---:|---:|---:|---|---|")
    for family, rows in sorted(samples.items()):
        a, b = fit_calibration(rows) or (float("nan"), float("nan"))
        tops = ", ".join(f"{c:.2f}" for c in normal_tops.get(family, [])) or "—"
        hits = sum(hit for _, hit in rows)
        print(f"| {family} | {len(rows)} | {hits} | {a:.3f} | {b:.3f} | {CALIBRATION[family]} | {tops} |")


if __name__ == "__main__":
    main()
