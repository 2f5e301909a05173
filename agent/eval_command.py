"""``loupe eval``: run the offline detector (and the verifier on simulated proposals) over a
manifest and print the tables of ``agent.evaluation``, with the centre-guess baseline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.evaluation import (
    Prediction,
    centre_guess,
    format_scores,
    format_simulation,
    read_manifest,
    score,
    score_simulation,
    simulate_proposals,
)
from tools.detection.detector import analyse_frame, detect_frame
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import LoupeError
from tools.study import StudyLimits, open_study
from tools.verify_coordinates import verify_location


@dataclass
class EvalReport:
    text: str
    data: dict[str, Any]


def _detect(images, limits: StudyLimits) -> tuple[dict, list[str]]:
    predictions, problems = {}, []
    for image in images:
        try:
            with open_study(image.path, limits=limits, modality=image.modality) as study:
                detections = detect_frame(study, 0)
            predictions[image.path] = [Prediction(d.x, d.y, d.confidence) for d in detections]
        except LoupeError as error:  # an unreadable image scores as a miss, and is listed
            predictions[image.path] = []
            problems.append(f"{image.path.name}: {error.message}")
    return predictions, problems


def _simulate(images, sigma_pct: float, limits: StudyLimits) -> list:
    results = []
    for proposal in simulate_proposals(images, sigma_pct):
        try:
            with open_study(proposal.image.path, limits=limits, modality=proposal.image.modality) as study:
                analysis = analyse_frame(study, 0)
                verified = verify_location(analysis.work, proposal.box, spacing_mm=study.pixel_spacing_mm(0),
                                           candidates=analysis.detections, space=analysis.space)
            results.append((proposal, verified.center, verified.verification.status == "rejected"))
        except LoupeError:
            results.append((proposal, proposal.box.center, True))
    return results


def run_eval(manifest: Path, *, limits: StudyLimits, simulate_sigma_pct: float | None = None) -> EvalReport:
    """Score the detector (or, with ``simulate_sigma_pct``, the verifier) on ``manifest``."""
    if not manifest.is_file():
        raise LoupeError(f"The manifest '{manifest}' does not exist.")
    images = read_manifest(manifest)
    started = time.perf_counter()
    if simulate_sigma_pct is not None:
        scores = score_simulation(_simulate(images, simulate_sigma_pct, limits))
        text = format_simulation(f"Verification of simulated proposals, σ = {simulate_sigma_pct:g}% of the diagonal", scores)
        data = {"simulation": [s.model_dump() for s in scores], "sigma_pct": simulate_sigma_pct}
    else:
        predictions, problems = _detect(images, limits)
        detector = score(images, predictions, ANOMALY_THRESHOLD)
        baseline = score(images, {i.path: centre_guess(i) for i in images}, ANOMALY_THRESHOLD)
        text = "\n\n".join([format_scores("Offline detector (top-ranked finding)", detector),
                            format_scores("Centre-guess baseline (same run)", baseline)])
        if problems:
            text += "\n\nImages that could not be read (scored as misses):\n" + "\n".join(f"- {p}" for p in problems)
        data = {"detector": [s.model_dump() for s in detector], "baseline": [s.model_dump() for s in baseline],
                "anomaly_threshold": ANOMALY_THRESHOLD, "unreadable": problems}
    elapsed = time.perf_counter() - started
    text += f"\n\n{len(images)} images in {elapsed:.1f} s."
    data["seconds"] = round(elapsed, 2)
    return EvalReport(text=text, data=data)
