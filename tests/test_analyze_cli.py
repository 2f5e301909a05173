"""``loupe analyze``, ``loupe verify`` and ``loupe eval`` in-process (agent/cli/)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from agent.evaluation.manifest import read_manifest
from tests.conftest import EVAL_DIR, pydicom_file, run_cli

OVERLAY_MR = EVAL_DIR / "pydicom_overlay" / "examples_overlay.dcm"
FINDING_KEYS = {"id", "label", "center_px", "bbox_px", "confidence", "source", "verification", "gaussian", "size_mm"}


pytestmark = pytest.mark.usefixtures("isolated_cli")


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _is_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


# -- analyze -----------------------------------------------------------------------------------------
def _check_analysis(printed: dict, out_dir: Path, width: int, height: int) -> None:
    ow, oh = _is_png(out_dir / "overlay.png")  # a figure (with legend/scale bar), not the bare frame
    assert min(ow, oh) >= 100
    saved = json.loads((out_dir / "findings.json").read_text())
    assert saved == printed
    assert set(printed) >= {"study_id", "modality", "anomaly_found", "threshold", "summary", "findings", "files"}
    assert "overlay.png" in printed["files"] and "findings.json" in printed["files"]
    for name in printed["files"]:
        assert (out_dir / name).is_file()
    assert not list(out_dir.glob("*.part"))  # no half-written files left behind
    findings = printed["findings"]
    assert findings, "the detector always lists its strongest candidates"
    confidences = [f["confidence"] for f in findings]
    assert confidences == sorted(confidences, reverse=True)
    assert printed["anomaly_found"] == any(c >= printed["threshold"] for c in confidences)
    ids = [f["id"] for f in findings]
    assert len(set(ids)) == len(ids)
    for finding in findings:
        assert set(finding) >= FINDING_KEYS
        assert finding["id"].startswith("F") and finding["id"][1:].isdigit()
        assert isinstance(finding["label"], str) and finding["label"]
        x, y = finding["center_px"]
        x0, y0, x1, y1 = finding["bbox_px"]
        assert 0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1
        assert x0 - 0.5 <= x <= x1 + 0.5 and y0 - 0.5 <= y <= y1 + 0.5
        assert 0.0 <= finding["confidence"] <= 1.0
        assert finding["source"] in ("classical", "vlm", "clinician")
        assert finding["verification"]["status"] in ("confirmed", "adjusted", "rejected", "unverified")
        assert isinstance(finding["verification"]["reasons"], list) and finding["verification"]["reasons"]
        assert finding["gaussian"] is None or isinstance(finding["gaussian"], dict)
        size = finding["size_mm"]
        assert size is None or (isinstance(size, list) and len(size) == 2 and all(v > 0 for v in size))


@pytest.mark.parametrize("source, size, has_mm", [
    (lambda: pydicom_file("CT_small.dcm"), (128, 128), True),
    (lambda: OVERLAY_MR, (484, 300), True),
], ids=["CT_small", "eval-MR-liver"])
def test_analyze_json(capsys, tmp_path, source, size, has_mm):
    path = source()
    if not path.exists():
        pytest.skip(f"{path} is not available")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "analyze", path, "--out", out_dir, "--json")
    assert code == 0, err
    printed = json.loads(out)
    _check_analysis(printed, out_dir, *size)
    assert printed["frame"] == 0
    # Both studies have pixel spacing: fitted findings are measured in mm.
    fitted = [f for f in printed["findings"] if f["gaussian"] is not None]
    if has_mm and fitted:
        assert any(f["size_mm"] is not None for f in fitted)


def test_analyze_text_output(capsys, tmp_path):
    code, out, err = run_cli(capsys, "analyze", pydicom_file("CT_small.dcm"), "--out", tmp_path / "text")
    assert code == 0, err
    assert "F1" in out and f"to {tmp_path / 'text'}" in out
    assert (tmp_path / "text" / "overlay.png").is_file()


def test_analyze_png_without_spacing_has_no_mm(capsys, tmp_path, eval_dir):
    out_dir = tmp_path / "us"
    code, out, err = run_cli(capsys, "analyze", eval_dir / "busi" / "benign_030.png", "--modality", "US",
                             "--out", out_dir, "--json")
    assert code == 0, err
    printed = json.loads(out)
    _check_analysis(printed, out_dir, 557, 462)
    assert all(f["size_mm"] is None for f in printed["findings"])  # never invent mm


@pytest.mark.parametrize("args, fragment", [
    (["analyze", "{missing}", "--out", "{out}"], ""),
    (["analyze", "{ct}", "--out", "{out}", "--backend", "gemini"], "Gemini"),
    (["analyze", "{ct}"], "--out"),
])
def test_analyze_errors(capsys, tmp_path, args, fragment):
    values = {"missing": tmp_path / "nope.dcm", "out": tmp_path / "o", "ct": pydicom_file("CT_small.dcm")}
    code, out, err = run_cli(capsys, *[a.format(**values) for a in args])
    assert code == 2
    assert fragment in _one_line_error(err)


# -- verify --------------------------------------------------------------------------------------------
def test_verify_json(capsys):
    code, out, err = run_cli(capsys, "verify", pydicom_file("CT_small.dcm"), "--box-2d", "100,500,300,700", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert set(printed) >= {"status", "center_px", "bbox_px", "reasons"}
    assert printed["status"] in ("confirmed", "adjusted", "rejected")
    assert isinstance(printed["reasons"], list) and printed["reasons"]
    assert len(printed["center_px"]) == 2 and len(printed["bbox_px"]) == 4
    if printed["status"] != "adjusted":
        # [ymin=100, xmin=500, ymax=300, xmax=700] of a 128² image: x 64–89.6, y 12.8–38.4 (edges).
        assert printed["center_px"] == pytest.approx([76.3, 25.1], abs=0.01)
        assert printed["bbox_px"] == pytest.approx([64.0, 12.8, 88.6, 37.4], abs=0.01)


def test_verify_text(capsys):
    code, out, err = run_cli(capsys, "verify", pydicom_file("CT_small.dcm"), "--box-2d", "100,500,300,700")
    assert code == 0, err
    first, *reasons = out.strip().splitlines()
    assert first.split(":")[0] in ("confirmed", "adjusted", "rejected") and "px" in first
    assert reasons and all(r.startswith("  - ") for r in reasons)


@pytest.mark.parametrize("box", ["100,500,300", "100,500,300,700,900", "a,b,c,d", "100;500;300;700", "",
                                 "100,500,1300,700", "300,500,100,700", "100,700,300,500", "nan,500,300,700"])
def test_verify_malformed_box(capsys, box):
    code, out, err = run_cli(capsys, "verify", pydicom_file("CT_small.dcm"), f"--box-2d={box}")
    assert code == 2 and out == ""
    _one_line_error(err)


def test_verify_frame_out_of_range(capsys):
    code, _, err = run_cli(capsys, "verify", pydicom_file("CT_small.dcm"), "--box-2d", "100,500,300,700", "--frame", "4")
    assert code == 2
    _one_line_error(err)


# -- eval ----------------------------------------------------------------------------------------------
def _small_manifest(eval_dir: Path, tmp_path: Path) -> Path:
    """Five images of the real manifest (all their rows), paths made absolute, in a folder we own;
    one row is kept relative, pointing at a symlink next to the new manifest."""
    with (eval_dir / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = list(reader)
    wanted: list[str] = []
    for dataset, normal in (("busi", False), ("busi", False), ("busi", True), ("figshare_brain_mri", False),
                            ("lidc_ct", False)):
        for row in rows:
            path = row["image_path"]
            if row["dataset"] == dataset and (row["label"] == "normal") == normal and path not in wanted:
                wanted.append(path)
                break
    # The LIDC image with a nodule and two <3 mm marks, to exercise grouping.
    lidc = "lidc_ct/LIDC-IDRI-0002/z-0089.50.dcm"
    wanted[-1] = lidc if any(r["image_path"] == lidc for r in rows) else wanted[-1]
    relative = wanted[0]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / Path(relative).name).symlink_to(eval_dir / relative)
    chosen = []
    for row in rows:
        if row["image_path"] in wanted:
            row = dict(row)
            if row["image_path"] == relative:
                row["image_path"] = f"images/{Path(relative).name}"
            else:
                row["image_path"] = str((eval_dir / row["image_path"]).resolve())
            chosen.append(row)
    manifest = tmp_path / "small" / "manifest.csv"
    manifest.parent.mkdir()
    # The relative row resolves against the manifest's own folder.
    manifest.parent.joinpath("images").symlink_to(tmp_path / "images")
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    return manifest


def test_read_manifest_handles_absolute_and_relative_paths(eval_dir, tmp_path):
    manifest = _small_manifest(eval_dir, tmp_path)
    images = read_manifest(manifest)
    assert len(images) == 5
    assert all(image.path.is_file() for image in images)
    outside = [i for i in images if not i.path.is_relative_to(eval_dir.resolve())]
    assert len(outside) == 1  # the relative row, through the symlink next to the manifest
    assert outside[0].path == manifest.parent / "images" / outside[0].path.name
    assert all(i.path.is_absolute() for i in images)
    normals = [i for i in images if not i.lesions]
    assert len(normals) == 1 and normals[0].dataset == "busi"
    lidc = next(i for i in images if i.dataset == "lidc_ct")
    if lidc.path.name == "z-0089.50.dcm":
        assert len(lidc.lesions) == 3 and len(lidc.scored_lesions()) == 1 and lidc.group == "lidc_ct"


def _centre_hits(images) -> float:
    lesion_images = [i for i in images if i.lesions]
    hits = [any(l.box.contains((i.width - 1) / 2, (i.height - 1) / 2) for l in i.scored_lesions()) for i in lesion_images]
    return sum(hits) / len(hits)


def test_eval_prints_both_tables_and_writes_json(capsys, eval_dir, tmp_path):
    manifest = _small_manifest(eval_dir, tmp_path)
    expected_baseline = _centre_hits(read_manifest(manifest))
    # Plus an unreadable image: scored as a miss and listed, never a crash.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    header = manifest.read_text().splitlines()[0].split(",")
    row = dict.fromkeys(header, "")
    row.update(dataset="busi", image_path=str(broken), modality="US", width="100", height="100", lesion_id="0",
               label="benign", bbox_x0="10", bbox_y0="10", bbox_x1="20", bbox_y1="20", center_x="15", center_y="15")
    with manifest.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=header).writerow(row)
    out_json = tmp_path / "scores.json"
    code, out, err = run_cli(capsys, "eval", manifest, "--json", out_json)
    assert code == 0, err
    assert "### Offline detector" in out and "### Centre-guess baseline" in out
    tables = out.split("### ")[1:]
    assert all("| hit@1 |" in t and "| hit@3 |" in t for t in tables[:2])
    assert "6 images in" in out and "broken.png" in out
    data = json.loads(out_json.read_text())
    assert {"detector", "baseline"} <= set(data)
    assert len(data["unreadable"]) == 1 and data["unreadable"][0].startswith("broken.png")
    groups = {s["group"] for s in data["detector"]}
    assert groups == {s["group"] for s in data["baseline"]} and "all" in groups and "busi" in groups
    overall = {name: next(s for s in data[name] if s["group"] == "all") for name in ("detector", "baseline")}
    assert overall["detector"]["n"] == overall["baseline"]["n"] == 5  # the normal image has no lesion
    assert overall["baseline"]["normals"] == 1 and overall["baseline"]["false_positive_rate"] == 1.0
    # The baseline's numbers, recomputed here from the manifest alone (the broken image is a
    # 100x100 whose box misses the centre).
    assert overall["baseline"]["hit_at_1"] == pytest.approx(expected_baseline * 4 / 5)
    for name in ("detector", "baseline"):
        s = overall[name]
        assert 0 <= s["hit_at_1"] <= s["hit_at_3"] <= 1
        assert s["median_dev_px"] >= 0 and math.isfinite(s["mean_dev_pct"])


def test_eval_simulation_table(capsys, eval_dir, tmp_path):
    manifest = _small_manifest(eval_dir, tmp_path)
    out_json = tmp_path / "sim.json"
    code, out, err = run_cli(capsys, "eval", manifest, "--simulate-proposals", "8", "--json", out_json)
    assert code == 0, err
    assert "Verification of simulated proposals, σ = 8% of the diagonal" in out
    assert "hit@1 before" in out and "hit@1 after" in out and "made worse" in out
    data = json.loads(out_json.read_text())
    assert data["sigma_pct"] == 8
    overall = next(s for s in data["simulation"] if s["group"] == "all")
    assert overall["n"] == 4 and 0 <= overall["made_worse"] <= 1 and 0 <= overall["rejected"] <= 1


def test_eval_simulation_pools_several_seeds(capsys, eval_dir, tmp_path):
    """--repeats K verifies K proposals per image (seeds SEED..SEED+K-1); one seed is the
    default run, and the pooled table holds exactly the single-seed runs' proposals."""
    manifest = _small_manifest(eval_dir, tmp_path)

    def simulation(*flags):
        out_json = tmp_path / "sim.json"
        code, out, err = run_cli(capsys, "eval", manifest, "--simulate-proposals", "8", "--json", out_json, *flags)
        assert code == 0, err
        data = json.loads(out_json.read_text())
        return out, data, next(s for s in data["simulation"] if s["group"] == "all")

    _, default, _ = simulation()
    _, first, first_all = simulation("--seed", str(default["seeds"][0]))
    _, second, second_all = simulation("--seed", str(default["seeds"][0] + 1))
    out, pooled, pooled_all = simulation("--seed", str(default["seeds"][0]), "--repeats", "2")
    assert first["simulation"] == default["simulation"] and first_all != second_all
    assert pooled["seeds"] == [default["seeds"][0], default["seeds"][0] + 1]
    assert "2 proposals per image" in out
    assert pooled_all["n"] == first_all["n"] + second_all["n"] == 8
    for key in ("hit_before", "hit_after", "made_worse", "rejected"):
        assert pooled_all[key] == pytest.approx((first_all[key] + second_all[key]) / 2)
    code, _, err = run_cli(capsys, "eval", manifest, "--simulate-proposals", "8", "--repeats", "0")
    assert code == 2 and "--repeats" in _one_line_error(err)


def test_eval_missing_manifest(capsys, tmp_path):
    code, out, err = run_cli(capsys, "eval", tmp_path / "nowhere.csv")
    assert code == 2 and out == ""
    assert "nowhere.csv" in _one_line_error(err)


def test_eval_gemini_backend_is_refused(capsys, eval_dir, tmp_path):
    code, out, err = run_cli(capsys, "eval", eval_dir / "manifest.csv", "--backend", "gemini")
    assert code == 2 and out == ""
    line = _one_line_error(err)
    assert "Gemini" in line and "--backend offline" in line


def test_eval_unknown_backend_is_a_usage_error(capsys, eval_dir):
    code, _, err = run_cli(capsys, "eval", eval_dir / "manifest.csv", "--backend", "magic")
    assert code == 2
    _one_line_error(err)
