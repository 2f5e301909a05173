"""``loupe eval --change``: the comparison with a prior scored on pairs with a known truth, made
here from the bundled CT's nodule by ``bench/make_longitudinal.py``'s recipe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.evaluation.change import Observed, Rule, cross_validate, decide, folds_by_source
from agent.evaluation.longitudinal import Lesion, make_pair, write_manifest, written
from tests.conftest import run_cli
from tools.compare.change import RELATIVE_MIN, UNCERTAINTY_K, LesionSize
from tools.compare.registration import Similarity
from tools.compare_with_prior.carry import PRESENT_MIN_CONTRAST_RATIO
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


# -- cross-validation of the rule's parameters (``loupe eval --change --cv K``) ----------------


def observed(truth: str, ratio: float, *, here: float = 10.0, there: float = 10.0, uncertainty: float = 0.2,
             source: str = "s"):
    """A pair as observed, without images: contrast 1 where the finding is, ``ratio`` where it is looked for."""
    return Observed("CT", truth, True, 1.0, ratio, LesionSize(here, here, uncertainty),
                    LesionSize(there, there, uncertainty), 0.1, 0.2, 1.0 if truth == "stable" else None, source)


def test_decide_applies_the_presence_ratio_k_and_relative_minimum_given():
    faint = observed("stable", 0.45)
    assert decide(faint, Rule(min_contrast_ratio=0.5)).predicted == "new"
    assert decide(faint, Rule(min_contrast_ratio=0.4)).predicted == "stable"
    # 2 mm of growth against a combined uncertainty of 0.85 mm: growth at k = 2, not at k = 3
    grown = observed("grown", 1.0, here=12.0, there=10.0, uncertainty=0.6)
    assert decide(grown, Rule(k=2.0, relative_min=0.0)).predicted == "grown"
    assert decide(grown, Rule(k=3.0, relative_min=0.0)).predicted == "stable"
    assert decide(grown, Rule(k=2.0, relative_min=0.25)).predicted == "stable"  # 2 mm < 25 % of 10 mm
    absent = decide(observed("stable", 0.1), Rule(min_contrast_ratio=0.5))
    assert absent.location_pct == 0.2  # the carried centre's error when nothing was found
    resolved = observed("resolved", 1.0, here=10.0, there=9.0)
    assert decide(resolved, Rule()).predicted == "stable"  # a prior lesion still there, 10 → 9 mm
    assert decide(replace(resolved, contrast_there=0.0)).predicted == "resolved"


def test_folds_never_split_a_source_and_are_dealt_per_dataset():
    rows = [{"dataset": d, "source": f"{d}/{i}"} for d in ("a", "b") for i in range(5) for _ in range(3)]
    folds = folds_by_source(rows, 3)
    assert set(folds) == {row["source"] for row in rows}  # one fold per source: its pairs go together
    for dataset in ("a", "b"):
        assert sorted(f for s, f in folds.items() if s.startswith(dataset)) == [0, 0, 1, 1, 2]


def test_cross_validation_chooses_on_the_other_folds_and_ties_go_to_the_reference():
    # Sources A, B, C: present lesions keep 45 % of their contrast, new ones 10 %; D's keeps 25 %.
    rows, seen = [], []
    for source, kept in (("A", 0.45), ("B", 0.45), ("C", 0.45), ("D", 0.25)):
        for truth, ratio in (("stable", kept), ("new", 0.1)):
            rows.append({"dataset": "x", "source": source})
            pair = observed(truth, ratio, source=source)
            seen.append((pair, pair))
    result = cross_validate(rows, seen, 4)
    assert result["in_sample"]["parameters"] == {"min_contrast_ratio": 0.2, "k": 2.0, "relative_min": 0.0}
    assert result["in_sample"]["by_modality"]["all"]["status_accuracy"] == 1.0
    chosen = {c["fold"]: c["parameters"] for c in result["fold_parameters"]}
    # without D, 0.2-0.4 tie and the nearest 0.5 wins; sizes that never change leave k and the relative minimum
    # at the reference
    assert chosen[3] == {"min_contrast_ratio": 0.4, "k": 2.0, "relative_min": 0.0}
    assert all(chosen[f]["min_contrast_ratio"] == 0.2 for f in (0, 1, 2))
    assert result["cross_validated"]["by_modality"]["all"]["status_accuracy"] == 7 / 8  # D's lesion missed
    assert [c["test_pairs"] for c in result["fold_parameters"]] == [2, 2, 2, 2]


def test_eval_change_cv_prints_both_tables_and_the_folds_choices(tmp_path, capsys, isolated_cli):
    with open_study(SAMPLE) as study:
        hu = np.asarray(study.physical(5), dtype=np.float64)
    lesion, transform = Lesion(366.65, 350.5, 12.7), Similarity(1.03, -2.0, -9.0, 6.0)
    plan = [("grown", 1.5, "one"), ("new", 1.0, "one"), ("stable", 1.0, "two"), ("resolved", 1.0, "two"),
            ("shrunk", 0.7, "three"), ("stable", 1.0, "three")]
    rows = [written(make_pair(hu, lesion, status, transform, factor=factor), tmp_path, number, dataset="lidc_ct",
                    modality="CT", source=source) for number, (status, factor, source) in enumerate(plan)]
    write_manifest(rows, tmp_path / "pairs.csv")
    code, out, err = run_cli(capsys, "eval", "--change", tmp_path / "pairs.csv", "--cv", "3", "--json",
                             tmp_path / "change.json")
    assert code == 0, err
    assert "in-sample: parameters chosen on all 6 pairs" in out and "3-fold cross-validated" in out
    data = json.loads((tmp_path / "change.json").read_text())
    cv = data["cv"]
    shipped_differs = cv["in_sample"]["parameters"] != data["parameters"]  # then the shipped table comes first
    assert out.count("| CT | 6 | 6 |") == 2 + shipped_differs and "Parameters chosen per fold" in out
    assert ("shipped parameters:" in out) == shipped_differs
    assert cv["folds"] == 3 and cv["grouped_by"] == "source"
    assert [c["test_pairs"] for c in cv["fold_parameters"]] == [2, 2, 2]  # one source (two pairs) per fold
    for choice in [*cv["fold_parameters"], cv["in_sample"]]:
        assert set(choice["parameters"]) == {"min_contrast_ratio", "k", "relative_min"}
        assert choice["parameters"]["min_contrast_ratio"] in cv["grid"]["min_contrast_ratio"]
    assert cv["cross_validated"]["by_modality"]["CT"]["pairs"] == 6
    assert data["parameters"] == {"min_contrast_ratio": PRESENT_MIN_CONTRAST_RATIO, "k": UNCERTAINTY_K,
                                  "relative_min": RELATIVE_MIN}
    assert data["by_modality"]["CT"]["pairs"] == 6  # the shipped figures keep their keys


def test_eval_change_cv_refuses_more_folds_than_sources(tmp_path, capsys, isolated_cli):
    manifest = pairs_manifest(tmp_path)  # four pairs of one source
    code, _, err = run_cli(capsys, "eval", "--change", manifest, "--cv", "2")
    assert code != 0 and "source images (1)" in err and "\n" not in err.strip()
