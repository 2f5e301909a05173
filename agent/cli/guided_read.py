"""A guided second read in the terminal, for ``loupe second-read``.

Interactive: each step is printed with Loupe's observation and the path of its saved crop, and
the clinician answers ``a`` / ``d`` / ``u`` (agree, disagree, uncertain) with an optional note
after it (``d it is the pacemaker``), or ``n`` / ``p`` to move without answering, ``s`` for the
summary. Scripted (tests, demos): ``responses`` is a list with one object per step,
``{"assessment": "agree" | "disagree" | "uncertain", "note": "..."}`` (note optional; an
optional ``"finding": {"point": [y, x]}`` or ``{"box_2d": [...]}`` adds a clinician finding);
extra entries are ignored and missing ones leave their steps unchecked.

The summary is printed; with ``as_json`` one object: ``{"summary": <concordance>, "text",
"study_id", "checklist_id", "session_id", "images"}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError

from agent.cli.terminal import open_conversation
from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from agent.toolbox import run_tool
from tools.checklists.record import Assessment
from tools.context import ToolResult
from tools.errors import LoupeError
from tools.second_read.flow import ClinicianMark

_SHORT = {"a": "agree", "d": "disagree", "u": "uncertain"}
_PROMPT = "[a]gree / [d]isagree / [u]ncertain (+ note), [n]ext, [p]revious, [s]ummary> "


class ScriptedResponse(BaseModel):
    """One entry of a ``--responses`` file."""

    assessment: Assessment
    note: str = ""
    finding: ClinicianMark | None = None


def parse_responses(data: Any) -> list[ScriptedResponse]:
    """A responses file's content, validated (a LoupeError naming the bad entry)."""
    if not isinstance(data, list):
        raise LoupeError("The responses file must hold a JSON list with one object per step.")
    responses = []
    for number, entry in enumerate(data, start=1):
        try:
            responses.append(ScriptedResponse.model_validate(entry))
        except ValidationError as error:
            problem = error.errors()[0]
            raise LoupeError(f"Response {number} is invalid ({'.'.join(map(str, problem['loc']))}: "
                             f"{problem['msg']}); each is {{\"assessment\": \"agree\" | \"disagree\" | "
                             "\"uncertain\", \"note\": \"...\"}.") from error
    return responses


def load_responses(path: Path) -> list[ScriptedResponse]:
    """Read and validate a ``--responses`` JSON file."""
    try:
        return parse_responses(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as error:
        raise LoupeError(f"The responses file {path} could not be read as JSON: {error}") from error


def run_second_read(settings: LoupeSettings, study: Path, responses: list | None, as_json: bool,
                    modality: str | None, *, image_dir: Path | None = None, lines: Iterable[str] | None = None) -> int:
    """Run a second read of ``study`` and print its summary; returns the exit code.

    ``responses``: scripted answers (dicts or ``ScriptedResponse``), or None for an interactive
    read from ``lines`` (default: standard input). Crops are saved under
    ``image_dir/second-read-<study id>/`` (default ``loupe-images``).
    """
    scripted = None if responses is None else parse_responses([_plain(r) for r in responses])
    conversation = open_conversation(settings, study, modality=modality, session_id=None)
    saver = _CropSaver((image_dir or Path("loupe-images")) / f"second-read-{conversation.ctx.current_study_id}")
    log = sys.stderr
    started = run_tool(conversation.ctx, "start_second_read", {})
    position = started.output.current.model_dump(mode="json")
    saver.save(started)
    if not as_json:
        print(f"session: {conversation.session_id}", file=log)
        print(f"Second read: {started.output.checklist_title}, {len(started.output.steps)} steps.", file=log)
    if scripted is not None:
        _scripted(conversation, scripted, saver, position["total"])
    else:
        _interactive(conversation, lines if lines is not None else _stdin_lines(), saver, position, log)
    summary = run_tool(conversation.ctx, "second_read_summary", {})
    saver.save(summary)
    conversation.save()
    _print_summary(conversation, summary, saver, as_json)
    return 0


def _plain(response: Any) -> Any:
    return response.model_dump() if isinstance(response, BaseModel) else response


def _scripted(conversation: Conversation, responses: list[ScriptedResponse], saver: _CropSaver, total: int) -> None:
    """Answer the steps in order; steps without a response stay unchecked."""
    for response in responses[:total]:
        args = {"assessment": response.assessment, "note": response.note}
        if response.finding is not None:
            args["finding"] = response.finding.model_dump(exclude_none=True)
        saver.save(run_tool(conversation.ctx, "record_assessment", args))
        conversation.save()


def _interactive(conversation: Conversation, lines: Iterable[str], saver: _CropSaver, position: dict[str, Any],
                 out: TextIO) -> None:
    ctx = conversation.ctx
    source = iter(lines)
    while position["step"] is not None:
        _print_step(position, saver, out)
        line = next(source, None)
        if line is None or line.strip().lower() in ("s", "summary", "q", "quit"):
            return
        word, _, note = line.strip().partition(" ")
        word = word.lower()
        try:
            if word in _SHORT or word in _SHORT.values():
                result = run_tool(ctx, "record_assessment", {"assessment": _SHORT.get(word, word), "note": note})
                position = result.output.next.model_dump(mode="json")
            elif word in ("n", "next", "p", "previous"):
                result = run_tool(ctx, "second_read_step", {"action": "next" if word.startswith("n") else "previous"})
                position = result.output.model_dump(mode="json")
            else:
                print("  (answer a, d or u with an optional note; n, p or s)", file=out)
                continue
        except LoupeError as error:
            print(f"  {error.message}", file=out)
            continue
        saver.save(result)
        conversation.save()


def _print_step(position: dict[str, Any], saver: _CropSaver, out: TextIO) -> None:
    step = position["step"]
    print(f"\nStep {step['number']} of {step['total']} — {step['title']} ({step['window'].replace('_', ' ')} window)",
          file=out)
    print(f"  look for: {'; '.join(step['look_for'])}", file=out)
    for descriptor, terms in step["lexicon"].items():
        print(f"  {descriptor.replace('_', ' ')}: {', '.join(terms)}", file=out)
    print(f"  Loupe: {step['observation']}", file=out)
    crop = saver.paths.get(step["crop"])
    if crop:
        print(f"  crop: {crop}", file=out)
    print(_PROMPT, end="", file=out, flush=True)


def _print_summary(conversation: Conversation, summary: ToolResult, saver: _CropSaver, as_json: bool) -> None:
    output = summary.output
    if as_json:
        print(json.dumps({"summary": output.summary.model_dump(mode="json"), "text": output.text,
                          "study_id": output.summary.study_id, "checklist_id": output.summary.checklist_id,
                          "session_id": conversation.session_id, "images": sorted(saver.paths.values())},
                         indent=2, ensure_ascii=False))
        return
    print(output.text)
    for item in output.summary.disagreements:
        print(f"  disagreement crop (step {item.step_number}): {saver.paths.get(item.crop, item.crop)}")


class _CropSaver:
    """Writes the crops the tools render, remembering where each went."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths: dict[str, str] = {}

    def save(self, result: ToolResult) -> None:
        if not result.artifacts:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for artifact in result.artifacts:
            target = self.folder / artifact.name
            write_atomically(target, artifact.data)
            self.paths[artifact.name] = str(target)


def _stdin_lines() -> Iterator[str]:
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        yield line
