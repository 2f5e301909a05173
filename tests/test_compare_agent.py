"""``compare_with_prior`` in a model's loop, end to end: the real google-genai and ``openai`` SDKs
against the loopback fakes (tests/fake_gemini.py, tests/fake_openai.py), on a DICOM CT pair with
a known truth (tests/prior_studies.py: the nodule 1.5 times larger now, 181 days later).

What is checked: the tool runs when the scripted model calls it and its result (the interval in
days, each finding's status) reaches the model as the function response; nothing that identifies
the patient or the studies (either Study Date in either form, the patient's name and id, any UID)
is in any request the fakes received; a call the model gets wrong comes back to it as one sentence
and the session goes on; a prior of another region is refused in one sentence; a stored session
reopens the prior from its own copy, with the comparison.

How the model may reach the prior: a study the clinician opened, by its id; a path the clinician
named in a message; any other path only inside the folders Loupe may open
(``ToolContext.allowed_roots``: the folder of each study the clinician opened — a series folder
itself, or the folder holding a file or a .zip).
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from agent.conversation import Conversation
from agent.events import AssistantText, Event, ToolFailed, ToolFinished, ToolStarted
from agent.models.gemini import GeminiBackend
from agent.models.openai_compatible import OpenAIBackend
from agent.settings import LoupeSettings
from tests import fake_gemini, fake_openai
from tests.prior_studies import write_prior_pair
from tests.test_sessions import assert_consistent  # user and model alternate, every call answered by id

#: Both Study Dates, as DICOM writes them and as a report does; the patient's name and id.
DATES = ("20231203", "2023-12-03", "20240601", "2024-06-01")
PATIENT = ("Compare^CMP-1", "CMP-1")
NODULE_FRAME = 5  # the sample's nodule (tests/prior_studies.py)


@dataclass(frozen=True)
class Pair:
    """The (current, prior) pair on disk: ``current`` and ``prior`` are sibling series folders;
    ``zipped`` is the current series as a .zip beside them (opened, it lets the model open the
    prior by path, since the folder holding it is then one Loupe may open)."""

    folder: Path
    current: Path
    prior: Path
    zipped: Path
    current_uid: str
    prior_uid: str
    #: Every Study, Series and SOP Instance UID of both series.
    uids: frozenset[str]


def make_pair(folder: Path) -> Pair:
    made = write_prior_pair(folder)
    zipped = folder / "current.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(made.current.iterdir()):
            archive.write(path, path.name)
    uids: set[str] = set()
    for path in [*made.current.glob("*.dcm"), *made.prior.glob("*.dcm")]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return Pair(folder, made.current, made.prior, zipped, made.current_uid, made.prior_uid, frozenset(uids))


def make_pair_copy(pair: Pair, folder: Path) -> Pair:
    """The module's pair copied (its UIDs unchanged), for a test that deletes part of it."""
    shutil.copytree(pair.folder, folder)
    return Pair(folder, folder / "current", folder / "prior", folder / "current.zip", pair.current_uid,
                pair.prior_uid, pair.uids)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


# -- helpers ------------------------------------------------------------------------------------


def assert_no_phi(pair: Pair, texts: Iterable[str], without_tools: Iterable[str]) -> None:
    """``texts``: whole request bodies; ``without_tools``: the same without the tool declarations,
    where the family name "Compare" must not stand alone as a word either (the declarations
    themselves say "Compare the current study ...": Loupe's words, not the patient's)."""
    forbidden = (*DATES, *PATIENT, pair.current_uid, pair.prior_uid, *sorted(pair.uids))
    for text in texts:
        for value in forbidden:
            assert value not in text, f"{value!r} was sent to the model"
    for text in without_tools:
        assert not re.search(r"\bCompare\b", text), "the patient's family name was sent to the model"


def assert_no_phi_gemini(pair: Pair, fake: fake_gemini.FakeGemini) -> None:
    assert fake.requests
    assert_no_phi(pair, [r.text() for r in fake.requests], [r.text(tools=False) for r in fake.requests])


def assert_no_phi_openai(pair: Pair, fake: fake_openai.FakeOpenAI) -> None:
    assert fake.requests
    assert_no_phi(pair, [r.body_text() for r in fake.requests], [r.body_text(tools=False) for r in fake.requests])


def assert_one_sentence(message: str) -> None:
    assert message and "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"more than one sentence: {message!r}"


def tool_events(events: Iterable[Event], name: str = "compare_with_prior") -> list[ToolFinished | ToolFailed]:
    return [e for e in events if isinstance(e, ToolFinished | ToolFailed) and e.name == name]


def finished(events: Iterable[Event], name: str = "compare_with_prior") -> ToolFinished:
    [event] = tool_events(events, name)
    assert isinstance(event, ToolFinished), getattr(event, "message", event)
    return event


def statuses(output: dict) -> dict[str, str]:
    return {item["id"]: item["status"] for item in output["findings"]}


def answer(events: Iterable[Event]) -> str:
    return "\n".join(e.text for e in events if isinstance(e, AssistantText))


def gemini_responses(request: fake_gemini.Request) -> list[dict]:
    """The function responses of the request's last (user) content, in order."""
    parts = request.contents[-1]["parts"]
    return [(p.get("functionResponse") or p.get("function_response"))["response"] for p in parts
            if "functionResponse" in p or "function_response" in p]


def openai_responses(request: fake_openai.Request) -> list[dict]:
    """The tool messages after the last assistant message, in order."""
    messages = request.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [json.loads(m["content"]) for m in messages[last + 1:] if m["role"] == "tool"]


def as_sent(conversation: Conversation, text: str) -> str:
    """``text`` as the privacy boundary lets it reach the model. The pair's family name is
    "Compare", and the boundary redacts identifying values wherever they occur, in any case: the
    tool's "compared" and "compare_with_prior" reach the model as "[redacted]d" and
    "[redacted]_with_prior" (see ``test_a_function_response_answers_the_call_by_its_own_id_and_name``)."""
    return conversation.boundary.redact(text)


def gemini_settings(**overrides) -> LoupeSettings:
    values = dict(gemini_api_key="test-key-not-real", backend="gemini", retry_initial_s=0.01, retry_max_s=0.05,
                  request_timeout_s=10.0, thinking_budget=512)
    values.update(overrides)
    return LoupeSettings(_env_file=None, **values)


def openai_settings(server: fake_openai.FakeOpenAI, **overrides) -> LoupeSettings:
    values = dict(backend="openai", openai_base_url=server.url, openai_model="medgemma-test", retry_initial_s=0.01,
                  retry_max_s=0.05, retry_attempts=3, request_timeout_s=10.0)
    values.update(overrides)
    return LoupeSettings(_env_file=None, **values)


def started(settings: LoupeSettings, study: Path, **kwargs) -> Conversation:
    conversation = Conversation.start(settings, study, **kwargs)
    conversation.confirm_no_burned_in_text()  # the CT may be shown to the model (the boundary holds it until then)
    return conversation


DETECT = ("detect_anomalies", {"frame": NODULE_FRAME, "use_vision_model": False})


def assert_grown(output: dict, prior_id: str | None = None) -> None:
    assert output["interval_days"] == 181
    assert statuses(output)["F1"] == "grown"
    f1 = next(item for item in output["findings"] if item["id"] == "F1")
    assert f1["change"]["unit"] == "mm" and f1["change"]["mean_diameter_mm"] > 1.5
    if prior_id is not None:
        assert output["prior_study_id"] == prior_id


# -- 1. Gemini ----------------------------------------------------------------------------------


def test_gemini_a_path_nobody_named_is_refused_then_the_prior_the_clinician_names_is_compared(fake, pair):
    config = gemini_settings()
    conversation, backend = started(config, pair.current), GeminiBackend(config)
    current_id = conversation.ctx.current_study_id
    assert conversation.ctx.allowed_roots == (pair.current.resolve(),)  # the series folder itself: not its siblings
    # The model guesses a path the clinician never gave: refused.
    fake.script(fake_gemini.call_reply(("compare_with_prior", {"prior": str(pair.prior)})),
                fake_gemini.text_reply("That folder is not one I may open; where is the earlier study?"))
    events = list(conversation.ask("compare with the prior", backend))
    [refused] = tool_events(events)
    assert isinstance(refused, ToolFailed) and refused.message == "That file is outside the folders Loupe may open."
    assert_one_sentence(refused.message)
    assert gemini_responses(fake.calls()[1]) == [{"error": as_sent(conversation, refused.message)}]
    assert list(conversation.ctx.views) == [current_id] and not conversation.ctx.comparisons

    # The clinician names it (with the patient and the current study's date: both must be redacted).
    fake.script(fake_gemini.call_reply(DETECT),
                fake_gemini.call_reply(("compare_with_prior", {"prior": str(pair.prior)})),
                fake_gemini.text_reply("F1 has grown over 181 days."))
    events = list(conversation.ask(f"compare this scan of Compare^CMP-1 from 2024-06-01 with the prior at "
                                   f"{pair.prior}", backend))
    assert [e.name for e in events if isinstance(e, ToolFinished)] == ["detect_anomalies", "compare_with_prior"]
    compared = finished(events)
    prior_id = compared.output["prior_study_id"]
    assert_grown(compared.output)
    assert compared.output["study_id"] == current_id and set(conversation.ctx.views) == {current_id, prior_id}
    assert conversation.ctx.current_study_id == current_id  # the prior opened beside it, not instead of it
    assert "F1 has grown" in answer(events) and events[-1].ok
    [sent] = gemini_responses(fake.calls()[-1])
    assert sent["output"]["interval_days"] == 181 and statuses(sent["output"]) == statuses(compared.output)
    assert "over 181 days" in sent["output"]["summary"]
    assert conversation.ctx.comparisons[current_id].prior_date == "2023-12-03"  # kept for the clinician only

    # "has F1 grown?": the model compares F1 alone, naming the prior by the id it was told. The
    # clinician now types the prior's date, which the boundary knows since the tool opened the prior.
    fake.script(fake_gemini.call_reply(("compare_with_prior", {"prior": prior_id, "finding_ids": ["F1"]})),
                fake_gemini.text_reply("Yes: F1 has grown."))
    events = list(conversation.ask("has F1 grown since 2023-12-03 (20231203)?", backend))
    again = finished(events)
    assert {i for i in statuses(again.output) if i.startswith("F")} == {"F1"}  # only the finding asked about
    assert_grown(again.output, prior_id)
    [sent] = gemini_responses(fake.calls()[-1])
    assert statuses(sent["output"]) == statuses(again.output) and sent["output"]["interval_days"] == 181
    assert len(fake.calls()) == 7 and fake.remaining == 0
    assert_consistent(conversation.history)
    assert_no_phi_gemini(pair, fake)


def test_gemini_a_prior_the_clinician_opened_is_compared_by_its_id(fake, pair):
    config = gemini_settings()
    conversation = started(config, pair.prior)  # the clinician opens the prior, then the current study
    prior_id = conversation.ctx.current_study_id
    conversation.open_study(pair.current)
    conversation.confirm_no_burned_in_text()
    current_id = conversation.ctx.current_study_id
    assert prior_id != current_id and set(conversation.ctx.views) == {prior_id, current_id}
    fake.script(fake_gemini.call_reply(DETECT),
                fake_gemini.call_reply(("compare_with_prior", {"prior": prior_id})),
                fake_gemini.text_reply("F1 has grown since the earlier study."))
    events = list(conversation.ask("compare with the prior I opened", GeminiBackend(config)))
    compared = finished(events)
    assert_grown(compared.output, prior_id)
    [sent] = gemini_responses(fake.calls()[-1])
    assert sent["output"]["interval_days"] == 181 and statuses(sent["output"])["F1"] == "grown"
    assert conversation.ctx.comparisons[current_id].output.prior_study_id == prior_id
    assert_consistent(conversation.history)
    assert_no_phi_gemini(pair, fake)


def test_gemini_a_prior_beside_an_opened_zip_may_be_opened_by_the_model(fake, pair):
    """A .zip (or a file) opened by the clinician makes the folder holding it one Loupe may open:
    the model reaches the prior there by a path nobody typed."""
    config = gemini_settings()
    conversation, backend = started(config, pair.zipped), GeminiBackend(config)
    assert conversation.ctx.allowed_roots == (pair.folder.resolve(),)
    fake.script(fake_gemini.call_reply(("compare_with_prior", {"prior": str(pair.prior)})),
                fake_gemini.text_reply("F1 has grown over 181 days."))
    events = list(conversation.ask("compare with the prior in the folder beside this study", backend))
    compared = finished(events)
    # No search was made first: nothing to compare, and the model is told what to do about it.
    assert compared.output["interval_days"] == 181 and compared.output["prior_study_id"] in conversation.ctx.views
    assert "run detect_anomalies first" in compared.output["message"]
    [sent] = gemini_responses(fake.calls()[-1])
    assert sent["output"]["interval_days"] == 181 and "run detect_anomalies first" in sent["output"]["message"]
    assert_no_phi_gemini(pair, fake)


# -- 2. OpenAI-compatible -----------------------------------------------------------------------


def test_openai_the_same_comparison_and_nothing_identifying_reaches_the_server(openai_fake, pair):
    config = openai_settings(openai_fake)
    conversation, backend = started(config, pair.zipped), OpenAIBackend(config)
    openai_fake.script(fake_openai.call_reply(DETECT),
                       fake_openai.call_reply(("compare_with_prior", {"prior": str(pair.prior)})),
                       fake_openai.text_reply("F1 has grown over 181 days."))
    events = list(conversation.ask(f"compare this scan of Compare^CMP-1 from 2024-06-01 with the prior at "
                                   f"{pair.prior}", backend))
    compared = finished(events)
    assert_grown(compared.output)
    prior_id = compared.output["prior_study_id"]
    [sent] = openai_responses(openai_fake.calls()[2])
    assert sent["output"]["interval_days"] == 181 and statuses(sent["output"]) == statuses(compared.output)
    assert answer(events) == "F1 has grown over 181 days." and events[-1].ok

    openai_fake.script(fake_openai.call_reply(("compare_with_prior", {"prior": prior_id, "finding_ids": ["F1"]})),
                       fake_openai.text_reply("Yes: F1 has grown."))
    events = list(conversation.ask("has F1 grown?", backend))
    again = finished(events)
    assert {i for i in statuses(again.output) if i.startswith("F")} == {"F1"}
    assert statuses(again.output)["F1"] == "grown"
    request = openai_fake.calls()[-1]
    [sent] = openai_responses(request)
    assert sent["output"]["interval_days"] == 181 and statuses(sent["output"])["F1"] == "grown"
    # The tool messages answer the calls the server made, by their ids.
    calls = [c["id"] for m in request.messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in request.messages if m["role"] == "tool"]
    assert calls == answered and len(calls) == 3
    assert_consistent(conversation.history)
    assert_no_phi_openai(pair, openai_fake)


# -- 3. calls the model gets wrong ------------------------------------------------------------------


def test_wrong_calls_come_back_to_the_model_as_one_sentence_and_the_session_goes_on(fake, pair):
    config = gemini_settings()
    conversation, backend = started(config, pair.zipped), GeminiBackend(config)
    current_id = conversation.ctx.current_study_id
    wrong = [
        {"prior": "/nonexistent/prior"},                              # outside the folders Loupe may open
        {"prior": str(pair.folder / "no-such-prior")},                # allowed, but not there
        {"prior": "pacs:1.2.840.99999.1"},                            # no PACS configured here
        {"prior": current_id},                                        # the current study itself
        {"finding_ids": ["F1"]},                                      # no prior at all
        {"prior": str(pair.prior), "finding_ids": "F1"},              # not a list
        {"prior": str(pair.prior), "finding_ids": ["F99"]},           # a finding that does not exist
    ]
    prior_holder: dict[str, str] = {}

    def swapped(request):  # the two studies swapped: the prior (opened by the call above) as the current one
        prior_holder["id"] = next(s for s in conversation.ctx.views if s != current_id)
        return fake_gemini.call_reply(("compare_with_prior", {"prior": current_id, "study_id": prior_holder["id"]}))

    fake.script(fake_gemini.call_reply(DETECT),
                fake_gemini.call_reply(*[("compare_with_prior", args) for args in wrong]),
                swapped,
                fake_gemini.text_reply("I could not compare: the calls were wrong."),
                fake_gemini.text_reply("You are welcome."))
    events = list(conversation.ask(f"compare with the prior at {pair.prior}", backend))
    failures = tool_events(events)
    assert all(isinstance(e, ToolFailed) for e in failures) and len(failures) == len(wrong) + 1
    messages = [e.message for e in failures]
    for message in messages:
        assert_one_sentence(message)
    assert messages[:4] == [
        "That file is outside the folders Loupe may open.",
        "The file 'no-such-prior' does not exist.",
        "No PACS is configured here, so a pacs: prior cannot be retrieved; give the prior as a file or folder.",
        "The prior given is the current study itself; give the earlier study.",
    ]
    assert "prior" in messages[4] and "required" in messages[4]
    assert "finding_ids" in messages[5]
    assert messages[6] == "There is no finding F99 in this session; its ids run from F1 to F5."
    assert messages[7] == ("The study given as the prior was made 181 days after the current one; give the earlier "
                           "study as the prior.")
    # Each error went back to the model as that call's function response, in order, one user turn per step.
    assert gemini_responses(fake.calls()[2]) == [{"error": as_sent(conversation, m)} for m in messages[:7]]
    assert gemini_responses(fake.calls()[3]) == [{"error": as_sent(conversation, messages[7])}]
    assert events[-1].ok and answer(events)
    assert not conversation.ctx.comparisons and conversation.ctx.current_study_id == current_id

    events = list(conversation.ask("thanks", backend))  # the session goes on
    assert answer(events) == "You are welcome." and events[-1].ok
    assert_consistent(conversation.history)
    assert_no_phi_gemini(pair, fake)


# -- 4. a prior of another region -------------------------------------------------------------------


def test_a_prior_of_another_region_is_refused_in_one_sentence(fake, pair, eval_dir):
    config = gemini_settings()
    brain_mr = eval_dir / "figshare_brain_mri" / "glioma_1851.jpg"
    conversation = started(config, brain_mr, modality="MR")  # the clinician opens a brain MR (JPEG) first
    brain_id = conversation.ctx.current_study_id
    conversation.open_study(pair.current / f"{NODULE_FRAME:03d}.dcm")  # then a chest CT image: the current one
    conversation.confirm_no_burned_in_text()
    assert conversation.ctx.current_study_id != brain_id
    fake.script(fake_gemini.call_reply(("detect_anomalies", {"use_vision_model": False})),
                fake_gemini.call_reply(("compare_with_prior", {"prior": brain_id})),
                fake_gemini.text_reply("The two studies cannot be compared."))
    backend = GeminiBackend(config)
    events = list(conversation.ask("compare with the brain MR", backend))
    [refused] = tool_events(events)
    assert isinstance(refused, ToolFailed)
    assert "does not show the same region" in refused.message
    assert_one_sentence(refused.message)
    assert gemini_responses(fake.calls()[2]) == [{"error": as_sent(conversation, refused.message)}]
    assert events[-1].ok and not conversation.ctx.comparisons
    fake.script(fake_gemini.text_reply("Still here."))
    assert list(conversation.ask("ok", backend))[-1].ok
    assert_consistent(conversation.history)
    assert_no_phi_gemini(pair, fake)


# -- 5. the session survives ------------------------------------------------------------------------


def test_a_resumed_session_reopens_the_prior_from_its_own_copy_with_the_comparison(fake, pair, store, tmp_path):
    own = make_pair_copy(pair, tmp_path / "pair")
    config = gemini_settings()
    conversation = started(config, own.zipped, store=store, owner="dr-a")
    current_id = conversation.ctx.current_study_id
    fake.script(fake_gemini.call_reply(DETECT),
                fake_gemini.call_reply(("compare_with_prior", {"prior": str(own.prior)})),
                fake_gemini.text_reply("F1 has grown over 181 days."))
    events = list(conversation.ask(f"compare with the prior at {own.prior}", GeminiBackend(config)))
    prior_id = finished(events).output["prior_study_id"]
    session_id = conversation.session_id
    stored = [e for e in store.events(session_id) if e["kind"] == "tool_finished" and e["name"] == "compare_with_prior"]
    assert len(stored) == 1 and statuses(stored[0]["output"])["F1"] == "grown"
    assert {row.study_id for row in store.studies(session_id)} == {current_id, prior_id}  # the prior's copy too

    shutil.rmtree(own.prior)  # the original is gone: the session must not need it
    resumed = Conversation.resume(config, store, session_id, "dr-a")
    assert set(resumed.ctx.views) == {current_id, prior_id} and resumed.ctx.current_study_id == current_id
    assert resumed.history == conversation.history
    assert resumed.ctx.comparisons[current_id] == conversation.ctx.comparisons[current_id]
    assert resumed.ctx.comparisons[current_id].prior_date == "2023-12-03"
    assert resumed.ctx.comparisons[current_id].output.interval_days == 181
    assert resumed.ctx.views[prior_id].study.identifying.study_instance_uid == own.prior_uid

    # The conversation goes on from the stored copy: "has F1 grown?" compares again.
    fake.script(fake_gemini.call_reply(("compare_with_prior", {"prior": prior_id, "finding_ids": ["F1"]})),
                fake_gemini.text_reply("Yes: F1 has grown."))
    events = list(resumed.ask("has F1 grown since 2023-12-03?", GeminiBackend(config)))
    again = finished(events)
    assert statuses(again.output)["F1"] == "grown" and again.output["interval_days"] == 181
    assert_consistent(resumed.history)
    assert_no_phi_gemini(own, fake)  # the reopened prior's values are redacted too



# -- the boundary and the ids that pair a call with its answer ----------------------------------

# An identifying value that occurs in a call's id or name (here the family name 'Compare' in
# 'compare_with_prior') must not be redacted there: the answer would no longer name its call.


def _part_field(part: dict, camel: str, snake: str) -> dict | None:
    return part.get(camel) or part.get(snake)


def test_a_function_response_answers_the_call_by_its_own_id_and_name(fake, pair):
    config = gemini_settings()
    conversation, backend = started(config, pair.zipped), GeminiBackend(config)
    fake.script(fake_gemini.call_reply(("compare_with_prior", {"finding_ids": ["F1"]})),  # fails at once: no prior
                fake_gemini.text_reply("Which prior?"))
    list(conversation.ask("compare with the prior", backend))
    parts = fake.calls()[1].parts()
    call = next(c for p in parts if (c := _part_field(p, "functionCall", "function_call")))
    response = next(r for p in parts if (r := _part_field(p, "functionResponse", "function_response")))
    assert (response["id"], response["name"]) == (call["id"], call["name"])


def test_a_tool_message_answers_the_call_by_its_own_id(openai_fake, pair):
    """A server's call ids are its own (vLLM's are 'chatcmpl-tool-' and 32 hex digits): any
    identifying value of three or more characters that occurs in one (a patient id of digits, a
    name such as 'Dee' among hex digits) breaks the pairing the same way, and a server that checks
    it (OpenAI's does) refuses the request."""
    config = openai_settings(openai_fake)
    conversation, backend = started(config, pair.zipped), OpenAIBackend(config)
    openai_fake.script(fake_openai.call_reply(("compare_with_prior", {"finding_ids": ["F1"]}, "call_compare_1")),
                       fake_openai.text_reply("Which prior?"))
    list(conversation.ask("compare with the prior", backend))
    messages = openai_fake.calls()[1].messages
    calls = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert calls == ["call_compare_1"]
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == calls


# -- the offline planner ----------------------------------------------------------------------------


def test_the_offline_planner_compares_with_the_prior_the_clinician_names(pair):
    from agent.models.planner import OfflinePlanner

    conversation = Conversation.start(LoupeSettings(_env_file=None), pair.current)
    current_id = conversation.ctx.current_study_id
    events = list(conversation.ask(f"compare with the prior at {pair.prior}", OfflinePlanner()))
    assert [e.name for e in events if isinstance(e, ToolStarted)][0] == "detect_anomalies"  # no search yet: one first
    compared = finished(events)
    assert_grown(compared.output)
    prior_id = compared.output["prior_study_id"]
    assert "F1 grown" in answer(events) and events[-1].ok

    events = list(conversation.ask("has F1 grown?", OfflinePlanner()))
    again = finished(events)
    assert again.output["prior_study_id"] == prior_id and again.output["study_id"] == current_id
    assert {i for i in statuses(again.output) if i.startswith("F")} == {"F1"}
    assert "F1 grown" in answer(events)
