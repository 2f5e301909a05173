"""A PNG or JPEG without a named modality: Loupe guesses it from the layout, says which and
why, and the clinician's word (or a DICOM header) always wins."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tests.conftest import pydicom_file, run_cli
from tools.study import open_study
from tools.study.modality import guess_modality

#: Floors under the dev accuracy measured when the rules were written (US 0.97, DX 0.93, MR 0.72);
#: CT is guessed only from its rendered slices here (the dev CTs are DICOM), 0.44.
ACCURACY_FLOOR = {"US": 0.9, "DX": 0.85, "MR": 0.6}


def _speckle(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.rayleigh(40.0, shape)


def test_guess_on_the_development_images(eval_dir):
    rows = {r["image_path"]: r["modality"] for r in csv.DictReader((eval_dir / "manifest.csv").open())}
    right, total, wrong = Counter(), Counter(), Counter()
    for path, modality in rows.items():
        if modality not in ACCURACY_FLOOR or not path.endswith((".png", ".jpg")):
            continue
        with open_study(eval_dir / path) as study:
            assumed = study.safe
        total[modality] += 1
        right[modality] += assumed.modality == modality
        wrong[modality] += assumed.modality not in (modality, None)
        assert assumed.modality_source == "guess" and assumed.modality_reason
    for modality, floor in ACCURACY_FLOOR.items():
        assert right[modality] / total[modality] >= floor, (modality, right[modality], total[modality])
    # A wrong guess is worse than "unknown" (the clinician is asked): few of them.
    assert sum(wrong.values()) <= 0.15 * sum(total.values()), wrong


def test_a_fan_shaped_sector_on_black_is_ultrasound():
    rows, cols = 300, 400
    yy, xx = np.mgrid[0:rows, 0:cols]
    angle = np.degrees(np.arctan2(xx - cols / 2, yy + 20.0))
    radius = np.hypot(xx - cols / 2, yy + 20.0)
    sector = (np.abs(angle) <= 35) & (radius >= 40) & (radius <= 300)
    image = np.where(sector, np.clip(_speckle((rows, cols)), 0, 255), 0)
    guess = guess_modality(image)
    assert guess.modality == "US" and "fan-shaped" in guess.reason


@pytest.mark.parametrize("image", [np.full((64, 64), 100.0), np.zeros((10, 10)), np.zeros((40, 40, 3))])
def test_nothing_to_go_on_is_unknown(image):
    guess = guess_modality(image)
    assert guess.modality is None and guess.reason


def test_a_smooth_synthetic_picture_is_not_taken_for_ultrasound():
    yy, xx = np.mgrid[0:120, 0:160]
    blob = 60 + 120 * np.exp(-((xx - 70) ** 2 + (yy - 60) ** 2) / 60.0)
    noisy = blob + np.random.default_rng(0).normal(0, 2.0, blob.shape)
    assert guess_modality(noisy).modality is None


def _info(capsys, *args) -> dict:
    code, out, err = run_cli(capsys, "info", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_info_says_what_was_assumed_and_where_from(capsys, eval_dir, isolated_cli):
    ultrasound = eval_dir / "busi" / "benign_030.png"
    guessed = _info(capsys, ultrasound)["modality_assumed"]
    assert guessed["modality"] == "US" and guessed["source"] == "guess" and "ultrasound" in guessed["reason"]
    given = _info(capsys, ultrasound, "--modality", "mr")
    assert given["modality"] == "MR" and given["modality_assumed"] == {"modality": "MR", "source": "user",
                                                                     "reason": None}
    header = _info(capsys, pydicom_file("CT_small.dcm"), "--modality", "US")
    assert header["modality_assumed"] == {"modality": "CT", "source": "header", "reason": None}


def test_the_cli_says_on_stderr_what_it_assumed(capsys, eval_dir, tmp_path, isolated_cli):
    radiograph = eval_dir / "nih_cxr14" / "00006736_000.png"
    code, out, err = run_cli(capsys, "analyze", radiograph, "--out", tmp_path / "out")
    assert code == 0
    assert err.startswith("modality: taken as DX: a chest radiograph") and "--modality" in err
    code, out, err = run_cli(capsys, "analyze", radiograph, "--modality", "DX", "--out", tmp_path / "out")
    assert code == 0 and "modality:" not in err


def test_an_unnamed_ultrasound_is_searched_as_ultrasound(eval_dir, tmp_path, capsys, isolated_cli):
    """The point of guessing: the same findings as when the clinician says "US"."""
    image = eval_dir / "busi" / "malignant_013.png"
    results = []
    for extra in ([], ["--modality", "US"]):
        code, out, err = run_cli(capsys, "analyze", image, *extra, "--out", tmp_path / "out", "--json")
        assert code == 0, err
        results.append([(f["label"], f["center_px"]) for f in json.loads(out)["findings"]])
    assert results[0] == results[1]
    assert results[0][0][0] == "hypoechoic mass"


def test_a_colour_screenshot_is_guessed_from_its_luma(eval_dir, tmp_path):
    grey = np.asarray(Image.open(eval_dir / "busi" / "benign_030.png").convert("RGB")).copy()
    grey[5:25, 5:120] = (255, 255, 0)  # a yellow annotation
    Image.fromarray(grey).save(tmp_path / "screenshot.png")
    with open_study(tmp_path / "screenshot.png") as study:
        assert study.modality == "US" and study.safe.modality_source == "guess"
