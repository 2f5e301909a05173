"""The load_study tool through the registry, as the agent and the UI call it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from agent.settings import LoupeSettings
from agent.toolbox import ToolCallError, new_context, run_tool
from tests.conftest import pydicom_file
from tools.errors import FrameOutOfRangeError, InvalidWindowError, NoStudyOpenError, UnreadableStudyError
from tools.registry import TOOLS


@pytest.fixture
def ctx():
    context = new_context(LoupeSettings())
    yield context
    context.close()


def test_declaration_is_derived_from_the_input_model():
    declaration = TOOLS["load_study"].declaration()
    assert declaration["name"] == "load_study"
    assert declaration["description"].startswith("Open a DICOM or PNG/JPEG study")
    properties = declaration["parameters"]["properties"]
    assert {"path", "study_id", "modality", "frame", "window"} <= set(properties)
    assert all(prop.get("description") for prop in properties.values())


def test_open_then_change_frame_and_window(ctx):
    result = run_tool(ctx, "load_study", {"path": str(pydicom_file("emri_small.dcm"))})
    output = result.output
    assert output.summary.frames == 10 and output.frame == 0
    assert ctx.current_study_id == output.study_id
    image = Image.open(io.BytesIO(result.artifacts[0].data))
    assert image.size == (64, 64) and result.artifacts[0].for_model
    again = run_tool(ctx, "load_study", {"frame": 7, "window": "100,200"})
    assert again.output.frame == 7 and again.output.window.center == 100
    kept = run_tool(ctx, "load_study", {})
    assert kept.output.frame == 7 and kept.output.window.width == 200
    reset = run_tool(ctx, "load_study", {"window": "default"})
    assert reset.output.window.center != 100


def test_ct_presets_are_listed(ctx):
    output = run_tool(ctx, "load_study", {"path": str(pydicom_file("CT_small.dcm")), "window": "lung"}).output
    assert output.window_presets == ["bone", "brain", "lung", "soft_tissue"]
    assert (output.window.center, output.window.width) == (-600, 1500)
    assert output.physical_range == (-896.0, 1167.0)
    assert output.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))


def test_reopening_same_content_keeps_one_view(ctx):
    first = run_tool(ctx, "load_study", {"path": str(pydicom_file("CT_small.dcm"))}).output
    second = run_tool(ctx, "load_study", {"path": str(pydicom_file("CT_small.dcm"))}).output
    assert first.study_id == second.study_id and len(ctx.views) == 1


def test_errors_are_typed(ctx, tmp_path):
    with pytest.raises(NoStudyOpenError):
        run_tool(ctx, "load_study", {})
    with pytest.raises(ToolCallError, match="no tool called"):
        run_tool(ctx, "load_studies", {})
    with pytest.raises(ToolCallError, match="frame"):
        run_tool(ctx, "load_study", {"path": "x", "frame": -1})
    run_tool(ctx, "load_study", {"path": str(pydicom_file("CT_small.dcm"))})
    with pytest.raises(FrameOutOfRangeError):
        run_tool(ctx, "load_study", {"frame": 5})
    with pytest.raises(InvalidWindowError):
        run_tool(ctx, "load_study", {"window": "liver"})
    with pytest.raises(NoStudyOpenError):
        run_tool(ctx, "load_study", {"study_id": "st-0000"})


def test_allowed_roots_confine_paths(ctx, tmp_path):
    ctx.allowed_roots = (tmp_path,)
    with pytest.raises(UnreadableStudyError, match="outside"):
        run_tool(ctx, "load_study", {"path": str(pydicom_file("CT_small.dcm"))})
    inside = tmp_path / "ct.dcm"
    inside.write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    assert run_tool(ctx, "load_study", {"path": str(inside)}).output.summary.modality == "CT"


def test_output_carries_no_phi(ctx):
    import pydicom

    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"), stop_before_pixels=True)
    result = run_tool(ctx, "load_study", {"path": str(pydicom_file("MR_small.dcm"))})
    dumped = result.output.model_dump_json()
    for value in (str(ds.PatientName), ds.PatientID, str(ds.StudyInstanceUID), "MR_small"):
        assert value not in dumped
