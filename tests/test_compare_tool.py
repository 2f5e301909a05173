"""``compare_with_prior`` on DICOM CT pairs with a known truth (``tests/prior_studies.py``): each
status, the registration against the known transform, the change and doubling time by the
formula, the refusals in one sentence; the offline planner's comparison intents; and
``loupe compare`` on files and on a real Orthanc (the prior found by ``loupe pacs priors``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from agent.settings import LoupeSettings
from agent.toolbox import new_context, run_tool
from tests.conftest import EVAL_DIR, run_cli
from tests.prior_studies import NODULE, TRANSFORM, write_prior_pair
from tools.errors import RegistrationError

STATUSES = ("grown", "shrunk", "new", "resolved", "stable")
FACTORS = {"grown": 1.5, "shrunk": 0.6}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("pairs")
    return {status: write_prior_pair(root / status, status=status, factor=FACTORS.get(status, 1.0))
            for status in STATUSES}


@pytest.fixture(scope="module")
def results(pairs):
    """Each pair searched and compared once for the tests that only read the result."""
    done: dict[str, tuple] = {}

    def get(status: str):
        if status not in done:
            done[status] = compared(pairs[status])
        return done[status]

    return get


def compared(pair, **args):
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(pair.current)})
    run_tool(ctx, "detect_anomalies", {"all_frames": True})
    result = run_tool(ctx, "compare_with_prior", {"prior": str(pair.prior), **args})
    return ctx, result


def at_nodule(output, status: str | None = None):
    """The compared finding on the sample's nodule (current place, or the prior's mapped back);
    with ``status``, the one of that status there (an inpainted nodule can leave a candidate of
    its own beside it)."""
    for item in output.findings:
        where = item.current or item.prior
        x, y = where.center_px
        if item.current is None:
            x, y = TRANSFORM.inverse().apply(x, y)
        if math.dist((x, y), (NODULE.x, NODULE.y)) < NODULE.radius and status in (None, item.status):
            return item
    raise AssertionError(f"no compared finding at the nodule: {output.findings}")


@pytest.mark.parametrize("status", STATUSES)
def test_each_status_on_a_pair_with_a_known_truth(results, status):
    ctx, result = results(status)
    output = result.output
    item = at_nodule(output, status if status == "resolved" else None)
    assert item.status == status
    assert output.interval_days == 181
    transform = output.registration.transform
    assert transform["scale"] == pytest.approx(1.04, abs=0.005)
    assert transform["rotation_deg"] == pytest.approx(3.0, abs=0.2)
    if status in ("grown", "shrunk"):
        measured = (item.current.size_mm[0] + item.current.size_mm[1]) / (item.prior.size_mm[0] + item.prior.size_mm[1])
        assert measured == pytest.approx(FACTORS[status], rel=0.2)
        assert item.change.mean_diameter_pct == pytest.approx((measured - 1) * 100, abs=0.6)
    if status == "new":
        assert item.prior is None and item.change is None
    if status == "resolved":
        assert item.id.startswith("P") and item.current is None
    if status == "stable":
        assert abs(item.change.mean_diameter_mm) < item.change.threshold
    assert ctx.comparisons[output.study_id].prior_date == "2023-12-03"
    assert "right on 70% of Loupe's test CT pairs" in output.message  # what a status is worth, measured


def test_a_grown_ct_nodule_has_the_doubling_time_of_its_sizes_and_volume_for_a_series(results):
    _, result = results("grown")
    item = at_nodule(result.output)
    (l1, s1), (l2, s2) = item.prior.size_mm, item.current.size_mm
    ratio = (l2 * s2 * s2) / (l1 * s1 * s1)
    assert item.change.doubling_time_days == pytest.approx(181 * math.log(2) / math.log(ratio), rel=0.02)
    assert item.change.volume_pct == pytest.approx((ratio - 1) * 100, rel=0.02)
    assert item.change.threshold >= 1.5


def test_figures_side_by_side_and_a_difference_panel(results):
    _, result = results("grown")
    names = [a.name for a in result.artifacts]
    assert "comparison-difference.png" in names
    assert {f"comparison-{item.id}.png" for item in result.output.findings} <= set(names)
    assert all(a.data.startswith(b"\x89PNG") for a in result.artifacts)


def test_asking_about_one_finding_keeps_the_others_in_the_session(results):
    ctx, first = results("stable")
    ids = [item.id for item in first.output.findings]
    again = run_tool(ctx, "compare_with_prior", {"prior": first.output.prior_study_id, "finding_ids": [ids[0]]})
    assert [item.id for item in again.output.findings] == [ids[0]]
    assert [item.id for item in ctx.comparisons[first.output.study_id].output.findings] == ids


def test_refusals_are_one_sentence(pairs, tmp_path):
    pair = pairs["stable"]
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(pair.prior)})
    with pytest.raises(RegistrationError, match="made 181 days after the current one"):
        run_tool(ctx, "compare_with_prior", {"prior": str(pair.current)})
    with pytest.raises(RegistrationError, match="the current study itself"):
        run_tool(ctx, "compare_with_prior", {"prior": ctx.current_study_id})

    brain = sorted((EVAL_DIR / "figshare_brain_mri").glob("*.jpg"))
    if not brain:
        pytest.skip(f"shared evaluation data not found at {EVAL_DIR}")
    one_slice = tmp_path / "slice.dcm"
    shutil.copyfile(sorted(pair.current.glob("*.dcm"))[5], one_slice)
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(one_slice)})
    with pytest.raises(RegistrationError, match="does not show the same region") as refused:
        run_tool(ctx, "compare_with_prior", {"prior": str(brain[0]), "interval_days": 30})
    assert len(str(refused.value).split(". ")) == 1
    with pytest.raises(RegistrationError, match="a series and the other a single image"):
        run_tool(ctx, "compare_with_prior", {"prior": str(pair.prior)})


def test_images_without_dates_take_the_interval_given(tmp_path):
    import numpy as np
    from PIL import Image

    from agent.evaluation.longitudinal import Lesion, make_pair
    from tools.compare.registration import Similarity

    sources = sorted((EVAL_DIR / "busi").rglob("*.png"))
    if not sources:
        pytest.skip(f"shared evaluation data not found at {EVAL_DIR}")
    image = np.asarray(Image.open(sources[0]).convert("L"), dtype=np.float64)
    centre = (image.shape[1] / 2, image.shape[0] / 2)
    pair = make_pair(image, Lesion(*centre, 20), "stable", Similarity.about(centre, 1.0, 2.0, 5.0, 3.0))
    for name, pixels in (("current.png", pair.current), ("prior.png", pair.prior)):
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / name)
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(tmp_path / "current.png"), "modality": "US"})
    output = run_tool(ctx, "compare_with_prior", {"prior": str(tmp_path / "prior.png"), "interval_days": 42}).output
    assert output.interval_days == 42
    assert "pixels" in output.message  # no spacing: sizes in px, the 1.5 mm minimum not applied


def test_the_offline_planner_compares_with_the_prior_named_or_open(pairs):
    from agent.conversation import Conversation
    from agent.events import AssistantText, ToolFinished
    from agent.models.planner import OfflinePlanner

    pair = pairs["grown"]
    conversation = Conversation.start(LoupeSettings(), pair.current)
    conversation.ctx.allowed_roots = (pair.current.resolve(),)  # as the app confines a model

    def ask(message):
        events = list(conversation.ask(message, OfflinePlanner()))
        tools = [e for e in events if isinstance(e, ToolFinished) and e.name == "compare_with_prior"]
        return tools, next(e.text for e in events if isinstance(e, AssistantText))

    tools, answer = ask(f"compare with the prior at {pair.prior}")
    assert tools and "181 days" in answer and " grown" in answer
    tools, answer = ask("has F1 grown?")
    assert tools[0].output["findings"][0]["id"] == "F1" and "F1 grown" in answer
    tools, answer = ask("what is new since last time?")
    assert tools and "2023" not in answer  # the interval, never the date, even offline


def test_loupe_compare_json_on_files(pairs, tmp_path, capsys, isolated_cli):
    pair = pairs["grown"]
    code, out, err = run_cli(capsys, "compare", pair.current, pair.prior, "--json", "--out", tmp_path / "out")
    assert code == 0, err
    result = json.loads(out)
    assert result["interval_days"] == 181
    assert {"method", "transform", "residual"} <= set(result["registration"])
    first = result["findings"][0]
    assert {"id", "status", "current", "prior", "change"} <= set(first)
    assert {"center_px", "size_mm"} <= set(first["current"])
    assert {"mean_diameter_mm", "mean_diameter_pct", "volume_pct", "doubling_time_days"} <= set(first["change"])
    assert (tmp_path / "out" / "comparison.json").exists() and (tmp_path / "out" / "comparison-difference.png").exists()
    assert "2023" not in out and "20231203" not in out

    code, _, err = run_cli(capsys, "compare", pair.current, tmp_path / "nowhere")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_priors_and_compare_on_a_real_orthanc(own_pacs, pairs, capsys, isolated_cli):
    pair = pairs["grown"]
    own_pacs.seed(sorted(pair.current.glob("*.dcm")) + sorted(pair.prior.glob("*.dcm")))
    code, out, err = run_cli(capsys, "pacs", "priors", pair.current_uid, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["study_uid"] == pair.prior_uid and rows[0]["interval_days"] == 181

    code, out, err = run_cli(capsys, "compare", f"pacs:{pair.current_uid}", f"pacs:{rows[0]['study_uid']}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["interval_days"] == 181
    assert at_nodule_json(result)["status"] == "grown"


def at_nodule_json(result):
    for item in result["findings"]:
        if item["current"] and math.dist(item["current"]["center_px"], (NODULE.x, NODULE.y)) < NODULE.radius:
            return item
    raise AssertionError(result["findings"])


def test_the_planner_takes_the_newest_prior_from_the_pacs(own_pacs, pairs, tmp_path):
    from agent.conversation import Conversation
    from agent.events import AssistantText
    from agent.models.planner import OfflinePlanner

    pair = pairs["shrunk"]
    own_pacs.seed(sorted(pair.current.glob("*.dcm")) + sorted(pair.prior.glob("*.dcm")))
    conversation = Conversation.start(LoupeSettings(), pair.current)
    answer = next(e.text for e in conversation.ask("compare with the prior", OfflinePlanner())
                  if isinstance(e, AssistantText))
    assert "181 days" in answer and "shrunk" in answer
    ctx = conversation.ctx
    prior_id = ctx.comparisons[ctx.current_study_id].output.prior_study_id
    assert ctx.views[prior_id].study.identifying.study_instance_uid == pair.prior_uid
