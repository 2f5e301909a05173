"""``loupe eval --cv K``: the detector's tuned rules and calibration scored on images they were
not chosen on, beside the in-sample figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.evaluation.crossval import ImageRuns, choose_rules, cross_validate, fold_of, rule_sets
from agent.evaluation.manifest import EvalImage, Lesion, read_manifest
from tests.conftest import run_cli, small_manifest
from tools.coordinates import BoxPx
from tools.detection.detector import REVIEW_CAP, Detection
from tools.detection.scoring import RULES, Rules

PICK = ["busi/benign_030.png", "busi/malignant_013.png", "busi/normal_006.png", "busi/benign_065.png",
        "nih_cxr14/00006736_000.png", "nih_cxr14/00008386_000.png", "nih_cxr14/00010277_000.png"]


def test_eval_cv_prints_in_sample_and_cross_validated_tables(eval_dir, tmp_path, capsys, isolated_cli):
    manifest = small_manifest(eval_dir, tmp_path, PICK)
    code, out, err = run_cli(capsys, "eval", manifest, "--cv", "2", "--json", tmp_path / "cv.json")
    assert code == 0, err
    assert "in-sample" in out and "2-fold cross-validated" in out and "Centre-guess baseline" in out
    assert "dx_lung_edge, dx_dense_metal, dx_sharp_metal (shipped)" in out and "chosen by" in out
    data = json.loads((tmp_path / "cv.json").read_text())
    overall = {key: next(s for s in data[key] if s["group"] == "all") for key in ("detector", "cross_validated")}
    assert overall["detector"]["n"] == overall["cross_validated"]["n"] == 6
    assert data["folds"] == 2 and set(data["rule_choices"]) == {"DX", "US"}
    # The per-kind figures the shipped performance table is made of (bench/detector_performance.py).
    assert "Per kind of image at the anomaly threshold" in out
    us, dx = data["performance"]["US breast"], data["performance"]["DX chest"]
    assert (us["lesion_images"], us["normal_images"], dx["lesion_images"]) == (3, 1, 3)
    assert 0 <= dx["lesions_flagged"] <= 3 and dx["sensitivity"] == pytest.approx(dx["lesions_flagged"] / 3, abs=1e-3)


def test_eval_cv_needs_two_folds(eval_dir, tmp_path, capsys, isolated_cli):
    code, _, err = run_cli(capsys, "eval", eval_dir / "manifest.csv", "--cv", "1")
    assert code == 2 and "at least 2 folds" in err


def test_folds_are_stratified_by_dataset(eval_dir):
    images = read_manifest(eval_dir / "manifest.csv")
    folds = fold_of(images, 5)
    for dataset in {"busi", "nih_cxr14", "figshare_brain_mri"}:
        counts = [sum(1 for i in images if i.dataset == dataset and folds[i.path] == f) for f in range(5)]
        assert max(counts) - min(counts) <= 1, (dataset, counts)


def test_rule_sets_cover_every_switch_of_a_family():
    sets = rule_sets("DX")
    assert len(sets) == 8 and sets[0] == RULES and len(set(sets)) == 8
    assert rule_sets("CT") == [RULES]
    assert Rules.names("US") == ["us_skin_line"]


def _run(hit_with: set[Rules], kind: str | None = "US breast") -> ImageRuns:
    """An image whose top detection is on its lesion under the rule sets in ``hit_with``."""
    lesion = Lesion(box=BoxPx(x0=0, y0=0, x1=10, y1=10), center=(5.0, 5.0), label="mass")
    image = EvalImage(path=Path(f"/x/{id(hit_with)}.png"), dataset="d", modality="US", width=100, height=100,
                      lesions=[lesion])
    on, off = Detection(0, 5, 5, lesion.box, 3, 1.0, 0.9, "m"), Detection(0, 50, 50, lesion.box, 3, 1.0, 0.9, "m")
    return ImageRuns(image, "US", {rules: [on if rules in hit_with else off] for rules in rule_sets("US")}, kind)


def test_a_rule_that_does_not_help_on_the_training_images_is_not_chosen():
    with_rule, without = RULES, replace(RULES, us_skin_line=False)
    assert choose_rules([_run({with_rule})], "US") == with_rule
    assert choose_rules([_run({with_rule, without})], "US") == without  # a tie: fewer rules on


def test_an_image_outside_the_detectors_competence_never_counts_as_flagged():
    """It chooses no rules, fits no calibration, and its confidence is capped below the threshold,
    as the app caps it (tools.detection.detector.REVIEW_CAP)."""
    runs = [_run({RULES}, kind=None if index == 0 else "US breast") for index in range(5)]
    for index, run in enumerate(runs):
        run.image.path = Path(f"/x/image-{index}.png")
    outside = runs[0]
    outside.by_rules = {rules: [replace(d, score=100.0) for d in found] for rules, found in outside.by_rules.items()}
    result = cross_validate(runs, 2)
    assert max(p.confidence for p in result.held_out[outside.image.path]) <= REVIEW_CAP
    assert max(p.confidence for p in result.shipped[outside.image.path]) <= REVIEW_CAP
