"""The detector's performance table and what a negative is worth: the shipped table is what its
script measures on the dev set, and a search that finds nothing is ``inconclusive`` unless the
measured sensitivity on that kind of image reaches the floor — never a normal study."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.evaluation.manifest import read_manifest
from agent.toolbox import run_tool
from tests.conftest import pydicom_file, run_cli
from tools.context import ToolContext
from tools.detection.performance import (KINDS, MIN_LESION_IMAGES, SENSITIVITY_FLOOR, ImageKind, KindPerformance,
                                         Measured, PerformanceTable, assess, shipped_table)
from tools.normal_wording import normal_study_phrases

ROOT = Path(__file__).resolve().parent.parent
#: A chest radiograph with a marked nodule that the offline detector does not flag.
MISSED_RADIOGRAPH = "nih_cxr14/00001075_024.png"
DX_CHEST = KINDS[("DX", "lungs")]


def _perf(sensitivity: float, lesion_images: int = 30, kind: ImageKind = DX_CHEST) -> KindPerformance:
    flagged = round(sensitivity * lesion_images)
    return KindPerformance(kind=kind.key, name=kind.name, images=lesion_images, lesion_images=lesion_images,
                           normal_images=0, lesions_flagged=flagged, sensitivity=flagged / lesion_images,
                           sensitivity_ci95=(0.0, 1.0), flagged_tops=flagged, flagged_tops_on_lesion=flagged,
                           precision_flagged_top=1.0, hit_at_1=0.5, hit_at_3=0.6, normals_flagged=0,
                           false_positive_rate=None)


def _table_with(perf: KindPerformance) -> PerformanceTable:
    shipped = shipped_table()
    return shipped.model_copy(update={"kinds": {**shipped.kinds, perf.kind: perf}})


# -- the shipped table -------------------------------------------------------------------------------
def test_the_shipped_table_describes_the_dev_set(eval_dir):
    table = shipped_table()
    manifest = eval_dir / "manifest.csv"
    images = read_manifest(manifest)
    assert table.dev_set.sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest(), \
        "the dev set changed: run bench/detector_performance.py"
    assert table.dev_set.images == len(images)
    assert table.dev_set.lesion_images + table.dev_set.normal_images == len(images)
    assert set(table.kinds) == {kind.key for kind in KINDS.values()}
    for perf in table.kinds.values():
        assert perf.sensitivity == pytest.approx(perf.lesions_flagged / perf.lesion_images, abs=1e-4)
        assert perf.precision_flagged_top == pytest.approx(perf.flagged_tops_on_lesion / perf.flagged_tops, abs=1e-4)
        low, high = perf.sensitivity_ci95
        assert low <= perf.sensitivity <= high
    # What the dev set says, and what the issue saw on unseen radiographs: the detector misses
    # nearly every chest-radiograph lesion, so a negative there can never count.
    assert table.kinds["DX chest"].sensitivity < 0.1


@pytest.mark.slow
def test_the_table_is_what_its_script_measures(tmp_path, eval_dir):
    out = tmp_path / "performance.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "detector_performance.py"), str(eval_dir / "manifest.csv"),
                           "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    measured = json.loads(out.read_text())
    shipped = json.loads((ROOT / "tools" / "detection" / "performance.json").read_text())
    for table in (measured, shipped):
        table["dev_set"].pop("measured_on")  # the day it ran
    assert measured == shipped, "the shipped table is stale: run bench/detector_performance.py"


# -- what a result is worth --------------------------------------------------------------------------
def test_nothing_found_is_inconclusive_below_the_floor():
    result = assess(False, DX_CHEST, [Measured("the offline detector", _perf(0.5))])
    assert result.result == "inconclusive"
    assert "15 of 30 lesions" in result.reason and "not a normal read" in result.reason
    assert f"{SENSITIVITY_FLOOR:.2f}" in result.reason
    assert not normal_study_phrases(result.reason)


def test_nothing_found_above_the_floor_states_the_sensitivity():
    result = assess(False, DX_CHEST, [Measured("the offline detector", _perf(0.9))])
    assert result.result == "no_anomaly_found"
    assert "27 of 30 lesions" in result.reason and "sensitivity 0.90" in result.reason
    assert "not a normal read" in result.reason and not normal_study_phrases(result.reason)


def test_too_few_images_or_no_measurement_or_another_kind_stay_inconclusive():
    few = assess(False, DX_CHEST, [Measured("the offline detector", _perf(0.9, MIN_LESION_IMAGES - 1))])
    assert few.result == "inconclusive" and "too few" in few.reason
    unmeasured = assess(False, DX_CHEST, [Measured("the detector model m.onnx", None)])
    assert unmeasured.result == "inconclusive" and "has not been measured" in unmeasured.reason
    outside = assess(False, None, [Measured("the offline detector", None)])
    assert outside.result == "inconclusive" and "not built for this kind of image" in outside.reason
    for result in (few, unmeasured, outside):
        assert not normal_study_phrases(result.reason)


def test_the_best_measured_detector_decides_and_an_anomaly_says_what_its_confidence_means():
    both = [Measured("the offline detector", _perf(0.1)), Measured("the detector model m.onnx", _perf(0.9))]
    assert assess(False, DX_CHEST, both).result == "no_anomaly_found"
    assert "the detector model m.onnx flagged 27 of 30" in assess(False, DX_CHEST, both).reason
    found = assess(True, DX_CHEST, both[::-1])  # the first detector's confidences are the ones shown
    assert found.result == "anomaly" and "27 of 27 top findings" in found.confidence_meaning
    assert "precision 1.00" in found.confidence_meaning
    few_flagged = assess(True, DX_CHEST, both)
    assert "too few to say what its confidence means" in few_flagged.confidence_meaning


# -- through the tool and the command line -------------------------------------------------------------
def _opened(eval_dir: Path, path: str, modality: str, ctx: ToolContext | None = None) -> ToolContext:
    ctx = ctx or ToolContext()
    run_tool(ctx, "load_study", {"path": str(eval_dir / path), "modality": modality})
    return ctx


def test_a_missed_radiograph_is_inconclusive_never_normal(eval_dir):
    ctx = _opened(eval_dir, MISSED_RADIOGRAPH, "DX")
    out = run_tool(ctx, "detect_anomalies", {}).output
    assert not out.anomaly_found and out.assessment == "inconclusive" and out.image_kind == "DX chest"
    assert out.performance.kind == "DX chest"
    dx = shipped_table().kinds["DX chest"]
    assert f"{dx.lesions_flagged} of {dx.lesion_images} lesions" in out.summary and "not a normal read" in out.summary
    assert not normal_study_phrases(out.summary)


def test_a_kind_measured_above_the_floor_reads_nothing_found(eval_dir):
    ctx = ToolContext(performance=_table_with(_perf(0.9)))
    out = run_tool(_opened(eval_dir, MISSED_RADIOGRAPH, "DX", ctx), "detect_anomalies", {}).output
    assert out.assessment == "no_anomaly_found" and not out.anomaly_found
    assert "sensitivity 0.90" in out.assessment_reason and not normal_study_phrases(out.summary)


def test_a_finding_says_what_its_confidence_means(eval_dir):
    out = run_tool(_opened(eval_dir, "busi/benign_030.png", "US"), "detect_anomalies", {}).output
    us = shipped_table().kinds["US breast"]
    assert out.assessment == "anomaly" and out.anomaly_found
    assert f"{us.flagged_tops_on_lesion} of {us.flagged_tops} top findings" in out.summary
    assert out.confidence_meaning in out.summary


def test_outside_competence_is_inconclusive():
    ctx = ToolContext()
    run_tool(ctx, "load_study", {"path": str(pydicom_file("examples_overlay.dcm"))})  # an abdominal MR
    out = run_tool(ctx, "detect_anomalies", {}).output
    assert out.outside_competence and out.assessment == "inconclusive" and out.image_kind is None
    assert not normal_study_phrases(out.summary)


def test_analyze_json_carries_the_assessment_and_a_site_table(eval_dir, tmp_path, capsys, isolated_cli, monkeypatch):
    code, out, err = run_cli(capsys, "analyze", eval_dir / MISSED_RADIOGRAPH, "--modality", "DX",
                             "--out", tmp_path / "a", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["assessment"] == "inconclusive" and result["anomaly_found"] is False
    assert "not a normal read" in result["summary"] and result["assessment_reason"] in result["summary"]
    assert result["performance"]["kind"] == "DX chest" and result["image_kind"] == "DX chest"
    site = tmp_path / "site-performance.json"
    site.write_text(_table_with(_perf(0.9)).model_dump_json())
    monkeypatch.setenv("LOUPE_PERFORMANCE_TABLE", str(site))
    code, out, err = run_cli(capsys, "analyze", eval_dir / MISSED_RADIOGRAPH, "--modality", "DX",
                             "--out", tmp_path / "b", "--json")
    assert code == 0, err
    assert json.loads(out)["assessment"] == "no_anomaly_found"
    site.write_text("{not json")
    code, _, err = run_cli(capsys, "analyze", eval_dir / MISSED_RADIOGRAPH, "--out", tmp_path / "c")
    assert code == 2 and "cannot be read" in err and err.count("\n") == 1


def test_a_trained_model_brings_its_own_table(eval_dir, tmp_path, capsys, isolated_cli, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # A real ONNX model that never proposes anything (its one box scores 0).
    silent = helper.make_node("Constant", [], ["boxes"], value=helper.make_tensor(
        "boxes", TensorProto.FLOAT, [1, 5], [0.0] * 5))
    graph = helper.make_graph([silent], "silent", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5])])
    model = tmp_path / "silent.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    monkeypatch.setenv("LOUPE_DETECTOR_MODEL", str(model))
    args = ("analyze", eval_dir / MISSED_RADIOGRAPH, "--modality", "DX", "--out", tmp_path / "a", "--json")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["assessment"] == "inconclusive"  # no table beside the model: not measured
    table = shipped_table().model_copy(update={"detector": "silent", "kinds": {"DX chest": _perf(0.95, 40)}})
    (tmp_path / "silent.performance.json").write_text(table.model_dump_json())
    code, out, err = run_cli(capsys, *args)
    result = json.loads(out)
    assert result["assessment"] == "no_anomaly_found" and "the detector model onnx flagged 38 of 40" in result["summary"]


def test_a_silent_vision_model_is_not_a_normal_read(eval_dir):
    from tests.test_detect_tool import FakeVision

    ctx = ToolContext()
    ctx.vision = FakeVision(lambda pixels: [])
    out = run_tool(_opened(eval_dir, MISSED_RADIOGRAPH, "DX", ctx), "detect_anomalies", {}).output
    assert out.vision_model == "fake-vlm" and out.assessment == "inconclusive"
    assert "fake-vlm was asked too" in out.summary and "its silence is not a normal read either" in out.summary
    assert not normal_study_phrases(out.summary)
