"""``loupe eval --change``: the comparison with a prior scored on pairs with a known truth, made
here from the bundled CT's nodule by ``bench/make_longitudinal.py``'s recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.evaluation.longitudinal import Lesion, make_pair, write_manifest, written
from tests.conftest import run_cli
from tools.compare.registration import Similarity
from tools.study import open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"


def pairs_manifest(folder: Path) -> Path:
    with open_study(SAMPLE) as study:
        hu = np.asarray(study.physical(5), dtype=np.float64)
    lesion = Lesion(366.65, 350.5, 12.7)
    transform = Similarity(1.04, 3.0, 12.0, -8.0)
    rows = [written(make_pair(hu, lesion, status, transform, factor=factor), folder, number, dataset="lidc_ct",
                    modality="CT", source="sample")
            for number, (status, factor) in enumerate([("grown", 1.5), ("new", 1.0), ("stable", 1.0),
                                                       ("resolved", 1.0)])]
    write_manifest(rows, folder / "pairs.csv")
    return folder / "pairs.csv"


def test_eval_change_scores_each_status_beside_the_baselines(tmp_path, capsys, isolated_cli):
    manifest = pairs_manifest(tmp_path)
    code, out, err = run_cli(capsys, "eval", "--change", manifest, "--json", tmp_path / "change.json")
    assert code == 0, err
    assert "| CT | 4 | 4 |" in out and "(always stable)" in out
    data = json.loads((tmp_path / "change.json").read_text())
    ct = data["by_modality"]["CT"]
    assert ct["status_accuracy"] == 1.0  # grown, new, stable and resolved, each told apart
    assert ct["location_pct_median"] < 0.5 < ct["location_pct_identity"]  # registration beats no registration
    assert ct["status_accuracy_always_stable"] == 0.25
    assert data["confusion"]["grown"] == {"grown": 1} and data["confusion"]["new"] == {"new": 1}


def test_eval_change_refuses_a_manifest_that_is_not_one_of_pairs(tmp_path, capsys, isolated_cli):
    other = tmp_path / "manifest.csv"
    other.write_text("dataset,image_path\nx,y.png\n")
    code, _, err = run_cli(capsys, "eval", "--change", other)
    assert code != 0 and "is not a pairs manifest" in err and "\n" not in err.strip()
