"""The offline planner: the same interface as the Gemini backend, no model.

It maps the clinician's message to intents (keywords in ``prompts/planner.toml``), runs the real
tools for them in a fixed order, and answers from the templates there, citing finding ids and
measurements. It never pretends to reason: questions that need a model get a plain "I cannot
do that offline" and a list of what it can do.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from pathlib import Path
from functools import partialmethod
from typing import Any

from agent.conversation import LATEST_PRIOR, Conversation, Turn
from agent.events import AssistantText, Event, ToolStarted
from agent.tool_calls import ToolOutcome, execute
from prompts import load_table
from tools.compare.record import LesionThere
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.detection.working import COMPETENCE
from tools.findings import Finding
from tools.report.location import location_in_words, slice_words

#: Intents in the order their tools run and their answers are written.
INTENT_ORDER = ("window", "frame", "recap", "analyse", "compare", "where", "size", "heatmap", "crops", "statistics",
                "revise", "report", "second_read", "differential")


#: Second-read commands in the order they are checked ("disagree" before "agree").
SECOND_READ_COMMANDS = ("disagree", "agree", "uncertain", "previous", "next", "jump", "summary")
_ASSESSMENTS = ("agree", "disagree", "uncertain")
_MARK = re.compile(r"\[\s*(-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)*)\s*\]")
_NOTE_TRIM = " ,.;:-–—!"


#: "F26 is 20 × 12 mm", "F3 measures 14 x 9 mm", "F2 = 8 by 6": the clinician's own size of a finding.
_CLINICIAN_SIZE = re.compile(r"\b(F[1-9]\d*)\s+(?:is|measures|measured|=|:)\s*(\d+(?:[.,]\d+)?)\s*(?:mm)?"
                             r"(?:\s*(?:[x×*]|by)\s*(\d+(?:[.,]\d+)?))?\s*mm\b", re.IGNORECASE)


def clinician_size(message: str) -> tuple[str, float, float | None] | None:
    """(finding id, long axis, short axis or None) of a size the clinician states in mm."""
    found = _CLINICIAN_SIZE.search(message)
    if found is None:
        return None
    long_axis, short_axis = (None if v is None else float(v.replace(",", ".")) for v in found.group(2, 3))
    return found.group(1).upper(), long_axis, short_axis


def classify(message: str) -> list[str]:
    """The intents a message expresses, in ``INTENT_ORDER``; a size the clinician states
    ("F26 is 20 × 12 mm") is that alone."""
    if clinician_size(message) is not None:
        return ["clinician_size"]
    text = f" {message.lower()} "
    keywords = load_table("planner.toml")["intents"]
    intents = [intent for intent in INTENT_ORDER if any(k in text for k in keywords.get(intent, ()))]
    if "recap" in intents and "analyse" in intents:
        intents.remove("analyse")  # "what did you find?" asks for the search made, not a new one
    if "compare" in intents:  # "has F1 grown?", "what is new since last time?" ask for the comparison only
        intents = [i for i in intents if i not in ("analyse", "size", "where", "recap")]
    if "revise" in intents and "report" in intents:
        intents.remove("report")  # "remove F2 from the report" revises the report; it is not a new draft
    if not intents and any(k in text for k in keywords["subject"]):
        intents = ["analyse"]
    return intents


def _keyword(text: str, keyword: str) -> re.Match | None:
    return re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", text)


def second_read_command(message: str) -> str | None:
    """The second-read command a message gives ("agree", "next", ...), if any; consulted only
    while a second read is in progress, before the other intents."""
    text = message.lower()
    table = load_table("planner.toml")["second_read_commands"]
    return next((c for c in SECOND_READ_COMMANDS if any(_keyword(text, k) for k in table[c])), None)


def _templates() -> dict[str, str]:
    return load_table("planner.toml")["templates"]


class OfflinePlanner:
    """Answers turns by running a tool plan and filling templates."""

    name = "offline"

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        answer = yield from planned_answer(conversation, turn)
        conversation.note_exchange(turn.message, answer)
        yield AssistantText(text=answer)


def planned_answer(conversation: Conversation, turn: Turn) -> Generator[Event, None, str]:
    """Run the tools the message asks for (yielding their events) and return the templated
    answer; also what a model without tool calling words its answer from."""
    return (yield from _Plan(conversation, turn).execute(classify(turn.message)))


class _Plan:
    """One turn's tool runs and the answer lines they produce."""

    def __init__(self, conversation: Conversation, turn: Turn):
        self.conversation = conversation
        self.ctx = conversation.ctx
        self.turn = turn
        self.lines: list[str] = []
        self.drew_annotated = False
        self.drew_figures = False
        self.calls = 0
        #: detect_anomalies' output when this turn ran it (its assessment says what a negative is worth).
        self.detected: dict[str, Any] = {}

    def execute(self, intents: list[str]) -> Generator[Event, None, str]:
        t = _templates()
        if self.ctx.current_study_id is None:
            return "No study is open yet; open a DICOM, PNG or JPEG study first."
        command = second_read_command(self.turn.message) if self._reading() else None
        if command is not None:
            yield from self._second_read_command(command)
        elif not intents:
            return t["help"]
        for intent in intents if command is None else ():
            yield from getattr(self, f"_{intent}")()
        if self.drew_figures:
            self.lines.append(t["figures"])
        return "\n".join(line for line in self.lines if line)

    # -- running tools -------------------------------------------------------------------------

    def _run(self, name: str, args: dict[str, Any]) -> Generator[Event, None, ToolOutcome]:
        self.calls += 1
        call_id = f"offline-{self.turn.id}-{self.calls}"
        yield ToolStarted(call_id=call_id, name=name, args=args)
        outcome = execute(self.ctx, name, args)
        yield outcome.event(call_id)
        if not outcome.ok:
            self.lines.append(outcome.error or "")
        return outcome

    def _findings(self, *, fresh: bool = False) -> Generator[Event, None, list[Finding]]:
        """Findings on the shown frame, or of the whole series when it was searched (detecting and
        measuring them first when needed). A CT or MR series is searched slice by slice, as
        ``loupe analyze`` does, and the view moves to the slice of the strongest finding."""
        view = self.ctx.view()
        existing = [f for f in self.ctx.study_findings(view.study.id) if f.frame == view.frame]
        if existing and not fresh:
            return existing
        volume = self._whole_series()
        args: dict[str, Any] = {"use_vision_model": False, **({"all_frames": True} if volume else {})}
        detected = yield from self._run("detect_anomalies", args)
        if not detected.ok:
            return []
        self.detected = detected.output
        found = [self.ctx.findings[f["id"]] for f in detected.output["findings"] if f["id"] in self.ctx.findings]
        if volume and found and found[0].frame != view.frame:  # findings come strongest first
            yield from self._run("load_study", {"frame": found[0].frame})
        reported = self._reported(found if volume else self.ctx.study_findings(view.study.id))
        if reported:
            yield from self._run("fit_gaussian", {"finding_ids": [f.id for f in reported]})
        if volume:
            return [self.ctx.findings[f.id] for f in found if f.id in self.ctx.findings]
        return [f for f in self.ctx.study_findings(view.study.id) if f.frame == view.frame]

    def _whole_series(self) -> bool:
        """Search every slice: on a CT or MR series always, on any multi-frame study when asked."""
        study = self.ctx.view().study
        if study.frame_count <= 1:
            return False
        asked = any(k in self.turn.message.lower() for k in load_table("planner.toml")["whole_series"]["words"])
        return asked or (study.safe.modality or "").upper() in ("CT", "MR")

    def _named_ids(self) -> list[str]:
        """Finding ids the message names (F1, f12, ...), in order, once each."""
        return list(dict.fromkeys(m.upper() for m in re.findall(r"\b[Ff]([1-9]\d*)\b", self.turn.message)))

    def _asked_findings(self) -> Generator[Event, None, list[Finding]]:
        """The findings the message names — each id not on this study is answered with where it
        was, never with another finding — or, when it names none, the findings worth stating."""
        named = [f"F{number}" for number in self._named_ids()]
        if not named:
            return self._reported((yield from self._findings()))
        found = []
        for finding_id in named:
            problem = self.ctx.finding_not_here(finding_id)
            if problem is None:
                found.append(self.ctx.findings[finding_id])
            elif problem not in self.lines:
                self.lines.append(problem)
        return found

    @staticmethod
    def _reported(findings: list[Finding]) -> list[Finding]:
        """Findings worth stating: those at the anomaly threshold, else the strongest one."""
        ranked = sorted(findings, key=lambda f: -f.confidence)
        called = [f for f in ranked if f.confidence >= ANOMALY_THRESHOLD]
        return called or ranked[:1]

    def _draw(self, layers: list[str]) -> Generator[Event, None, None]:
        outcome = yield from self._run("render_overlay", {"layers": layers})
        self.drew_figures = self.drew_figures or outcome.ok

    # -- intents ----------------------------------------------------------------------------------

    def _window(self) -> Generator[Event, None, None]:
        text = self.turn.message.lower()
        numbers = re.search(r"(-?\d+(?:\.\d+)?)\s*[,/]\s*(\d+(?:\.\d+)?)", text)
        presets = load_table("planner.toml")["windows"]
        chosen = next((name for name, words in presets.items() if any(w in text for w in words)), None)
        window = f"{numbers.group(1)},{numbers.group(2)}" if numbers else chosen or "default"
        outcome = yield from self._run("load_study", {"window": window})
        if outcome.ok and outcome.output.get("window"):
            shown = outcome.output["window"]
            name = f"the {chosen.replace('_', ' ')} window" if chosen and not numbers else "the window"
            self.lines.append(_templates()["window_set"].format(name=name, center=shown["center"], width=shown["width"]))

    def _frame(self) -> Generator[Event, None, None]:
        number = re.search(r"(?:slice|frame)\s+(\d+)", self.turn.message.lower())
        if number is None:
            return
        outcome = yield from self._run("load_study", {"frame": max(int(number.group(1)) - 1, 0)})
        if outcome.ok:
            self.lines.append(_templates()["frame_set"].format(frame=outcome.output["frame"] + 1,
                                                               frames=outcome.output["summary"]["frames"]))

    def _analyse(self) -> Generator[Event, None, None]:
        t = _templates()
        findings = yield from self._findings(fresh=True)
        view = self.ctx.view()
        frames = len(self.detected.get("frames_searched", ())) or 1
        searched = (f"all {frames} slices of the series" if frames > 1 else
                    f"frame {view.frame + 1} of {view.study.frame_count}" if view.study.frame_count > 1 else "the image")
        self.lines.append(t["analysed"].format(where_searched=searched))
        reported = self._reported(findings)
        called = [f for f in reported if f.confidence >= ANOMALY_THRESHOLD]
        detected = self.detected
        if not called:
            top = _describe_brief(reported[0]) if reported else "none"
            outside = detected.get("outside_competence")
            if outside:
                self.lines.append(t["outside"].format(what=outside, competence=COMPETENCE, top=top))
            self.lines.append(t["nothing_called"].format(reason=detected.get("assessment_reason", ""), top=top))
        else:
            self.lines.append(t["anomalies"].format(count=len(called), threshold=ANOMALY_THRESHOLD))
            self.lines += [self._finding_line(f) for f in called]
        if reported and detected.get("confidence_meaning"):  # a confidence was named: say what it means here
            self.lines.append(t["confidence_meaning"].format(meaning=detected["confidence_meaning"]))
        yield from self._annotated()

    def _recap(self) -> Generator[Event, None, None]:
        """What the search already made of this study found (a pre-read's, an earlier turn's),
        from the stored findings, with nothing run again; a study not searched yet is searched."""
        t = _templates()
        study_id = self.ctx.current_study_id
        stored = [f for f in self.ctx.study_findings(study_id) if f.source != "clinician"]
        if not stored:
            yield from self._analyse()
            return
        self.lines.append(t["recap"])
        reported = self._reported(stored)
        called = [f for f in reported if f.confidence >= ANOMALY_THRESHOLD]
        if called:
            self.lines.append(t["anomalies"].format(count=len(called), threshold=ANOMALY_THRESHOLD))
            self.lines += [self._finding_line(f) for f in called]
        else:
            self.lines.append(t["recap_nothing_called"].format(threshold=ANOMALY_THRESHOLD,
                                                               top=_describe_brief(reported[0])))
        history = self.ctx.reports.get(study_id)
        if history is not None and history.versions:
            current = history.current
            self.lines.append(t["recap_report"].format(version=current.version, status=current.status))

    def _where(self) -> Generator[Event, None, None]:
        findings = yield from self._asked_findings()
        for finding in findings:
            self.lines.append(_templates()["where_line"].format(
                id=finding.id, location=self.location(finding), x=finding.center_px[0], y=finding.center_px[1],
                frame_text=self._slice_text(finding), verification=_verification_words(finding)))
        if findings:
            yield from self._annotated()

    def _size(self) -> Generator[Event, None, None]:
        t = _templates()
        findings = yield from self._asked_findings()
        unfitted = [f.id for f in findings if f.gaussian is None]
        if unfitted:
            yield from self._run("fit_gaussian", {"finding_ids": unfitted})
            findings = [self.ctx.findings[f.id] for f in findings]
        for finding in findings:
            fit = finding.gaussian
            if finding.size_mm is None and finding.size_px is None:
                reason = fit.note if fit is not None and fit.note else "neither a segmentation nor a fit held"
                self.lines.append(t["size_unfitted"].format(id=finding.id, reason=reason))
            else:
                how = t["size_how"][finding.size_method or "gaussian fwhm"].format(
                    r2=fit.r_squared if fit is not None else float("nan"))
                self.lines.append(t["size_line"].format(id=finding.id, size_text=_size_text(finding), how=how))

    def _clinician_size(self) -> Generator[Event, None, None]:
        """The clinician's own size of a finding, in words: it becomes the finding's size."""
        finding_id, long_axis, short_axis = clinician_size(self.turn.message)
        if short_axis is None:  # a reader's size of a lesion is bidimensional (long and short axis)
            self.lines.append(_templates()["clinician_size_one_axis"].format(id=finding_id, size=f"{long_axis:g}"))
            return
        outcome = yield from self._run("set_finding_size", {"finding_id": finding_id, "long_axis_mm": long_axis,
                                                            "short_axis_mm": short_axis})
        if outcome.ok:
            self.lines.append(outcome.output["message"])

    def _annotated(self) -> Generator[Event, None, None]:
        if not self.drew_annotated:
            self.drew_annotated = True
            yield from self._draw(["annotated"])

    def _figure(self, layer: str) -> Generator[Event, None, None]:
        """A figure layer of the findings (heatmap, crops, statistics): the intent is its name; of
        the findings the message names, when it names some."""
        if not self._named_ids():
            yield from self._findings()
            yield from self._draw([layer])
            return
        findings = yield from self._asked_findings()
        if not findings:
            return
        outcome = yield from self._run("render_overlay", {"layers": [layer], "finding_ids": [f.id for f in findings]})
        self.drew_figures = self.drew_figures or outcome.ok

    _heatmap = partialmethod(_figure, "heatmap")
    _crops = partialmethod(_figure, "crops")
    _statistics = partialmethod(_figure, "statistics")

    def _compare(self) -> Generator[Event, None, None]:
        """Compare with the prior the message or the session names (``_prior``); the current
        findings searched first when no search has been made."""
        prior = self._prior()
        if prior is None:
            self.lines.append(_templates()["compare_which_prior"])
            return
        if not self.ctx.study_findings(self.ctx.current_study_id or ""):
            yield from self._findings()
        named = [f"F{number}" for number in self._named_ids()]
        args: dict[str, Any] = {"prior": prior, **({"finding_ids": named} if named else {})}
        outcome = yield from self._run("compare_with_prior", args)
        if outcome.ok:
            self.lines += comparison_lines(outcome.output)

    def _prior(self) -> str | None:
        """The prior to compare with: a path or pacs: reference in the message, the prior of an
        earlier comparison, another study open in the session, or the newest prior on the PACS."""
        for token in re.findall(r"(?:pacs:\S+|\S*[/\\]\S+)", self.turn.message):
            token = token.rstrip(".,;:!?)")
            if token.startswith("pacs:") or Path(token).exists():
                return token
        current = self.ctx.current_study_id
        earlier = self.ctx.comparisons.get(current or "")
        if earlier is not None and earlier.output.prior_study_id in self.ctx.views:
            return earlier.output.prior_study_id
        others = [study_id for study_id in self.ctx.views if study_id != current]
        if others:
            return others[-1]
        return LATEST_PRIOR if self.conversation.settings.pacs_configured else None

    def _report(self) -> Generator[Event, None, None]:
        """Draft, then say so in a few lines: the report panel is the one full copy."""
        yield from self._findings()
        outcome = yield from self._run("draft_report", {"use_model_wording": False})
        if outcome.ok:
            report = self.ctx.reports[self.ctx.current_study_id].current
            listed = ", ".join(f.finding_id for f in report.findings) or "no finding (none reached the threshold)"
            self.lines.append(_templates()["report_drafted"].format(
                version=report.version, status=report.status, listed=listed, impression=report.impression))

    def _revise(self) -> Generator[Event, None, None]:
        """Explicit edits the planner can read from a message: removing or adding findings by id."""
        text = self.turn.message
        ids = list(dict.fromkeys(re.findall(r"\b(F[1-9]\d*)\b", text)))
        removing = re.search(r"\b(drop|remove|delete)\b", text, re.I)
        adding = re.search(r"\b(add|include|put)\b", text, re.I)
        if ids and removing and adding:  # which id goes which way is for a model, or one change at a time
            self.lines.append(_templates()["revise_one_at_a_time"])
            return
        if ids and removing:
            edits, change = [{"op": "remove_finding", "finding_id": i} for i in ids], f"removed {', '.join(ids)}"
        elif ids and adding:
            edits, change = [{"op": "add_finding", "finding_id": i} for i in ids], f"added {', '.join(ids)}"
        else:
            self.lines.append(_templates()["revise_needs_model"])
            return
        outcome = yield from self._run("revise_report", {"edits": edits, "reason": text.strip()[:200]})
        if outcome.ok and not outcome.output.get("changed", True):
            self.lines.append(_templates()["report_unchanged"].format(version=outcome.output["version"]))
        elif outcome.ok:
            self.lines.append(_templates()["report_revised"].format(
                version=outcome.output["version"], status=outcome.output["status"], change=change))

    def _second_read(self) -> Generator[Event, None, None]:
        """Start (or resume) a guided second read and show its current step."""
        t = _templates()
        restart = any(w in self.turn.message.lower() for w in ("restart", "start over", "new second read"))
        outcome = yield from self._run("start_second_read", {"restart": restart})
        if not outcome.ok:
            return
        started = outcome.output
        position = started["current"]
        if started["resumed"]:
            self.lines.append(t["second_read_resumed"].format(checklist=started["checklist_title"],
                                                              checked=position["checked"], count=position["total"]))
        else:
            self.lines.append(t["second_read_started"].format(checklist=started["checklist_title"],
                                                              count=len(started["steps"])))
        self._show_position(position)

    # -- a second read in progress ----------------------------------------------------------------

    def _reading(self) -> bool:
        state = self.ctx.second_reads.get(self.ctx.current_study_id)
        return state is not None and state.summarised_at is None

    def _second_read_command(self, command: str) -> Generator[Event, None, None]:
        if command in _ASSESSMENTS:
            yield from self._assess(command)
        elif command in ("next", "previous"):
            outcome = yield from self._run("second_read_step", {"action": command})
            if outcome.ok:
                self._show_position(outcome.output)
        elif command == "jump":
            target = re.search(r"\bstep\s+([a-z0-9_]+)", self.turn.message.lower())
            args = ({"action": "jump", "step": int(target.group(1)) if target.group(1).isdigit() else target.group(1)}
                    if target else {"action": "current"})
            outcome = yield from self._run("second_read_step", args)
            if outcome.ok:
                self._show_position(outcome.output)
        else:
            yield from self._second_read_summary()

    def _assess(self, assessment: str) -> Generator[Event, None, None]:
        """Record agree / disagree / uncertain, the rest of the message as the note, and a mark
        in brackets ([y, x] or [ymin, xmin, ymax, xmax], 0–1000) as the clinician's finding."""
        t = _templates()
        note, mark = _note_and_mark(self.turn.message, assessment)
        args: dict[str, Any] = {"assessment": assessment, "note": note}
        if mark is not None:
            args["finding"] = {**mark, "label": note[:80] or "clinician-marked finding"}
        outcome = yield from self._run("record_assessment", args)
        if not outcome.ok:
            return
        recorded = outcome.output
        self.lines.append(t["second_read_recorded"].format(number=recorded["step_number"],
                                                           assessment=recorded["assessment"], note=_quoted(note)))
        added = recorded["clinician_finding"]
        if added:
            self.lines.append(t["second_read_finding"].format(id=added["finding_id"], label=added["label"],
                                                              verification=added["verification"]))
        if assessment == "disagree" and (note or added):  # the reader's word belongs in the report
            self.lines.append(t["second_read_offer_report"])
        if recorded["next"] is not None:
            self._show_position(recorded["next"])

    def _second_read_summary(self) -> Generator[Event, None, None]:
        text = self.turn.message.lower()
        append = "report" in text or "addendum" in text
        outcome = yield from self._run("second_read_summary", {"append_to_report": append})
        if not outcome.ok:
            return
        self.lines.append(outcome.output["text"])
        if outcome.output["report_version"] is not None:
            key = "second_read_already_in_report" if outcome.output.get("report_unchanged") else "second_read_appended"
            self.lines.append(_templates()[key].format(version=outcome.output["report_version"]))
        self.drew_figures = self.drew_figures or bool(outcome.output["summary"]["disagreements"])

    def _show_position(self, position: dict[str, Any]) -> None:
        """The step now on screen (its crop is the tool's image), or the end of the checklist."""
        t = _templates()
        step = position["step"]
        if step is None:
            unchecked = position["unchecked"]
            listing = f"; steps not checked: {', '.join(map(str, unchecked))}" if unchecked else ""
            self.lines.append(t["second_read_end"].format(total=position["total"], unchecked=listing))
            return
        self.lines.append(t["second_read_step"].format(
            number=step["number"], total=step["total"], title=step["title"], window=step["window"].replace("_", " "),
            look_for="; ".join(step["look_for"]), observation=step["observation"]))
        for descriptor, terms in step["lexicon"].items():
            self.lines.append(t["second_read_lexicon"].format(descriptor=descriptor.replace("_", " "),
                                                              terms=", ".join(terms)))
        self.lines += [f"Note: {note}." for note in step["notes"]]
        if step["assessment"]:
            self.lines.append(t["second_read_answered"].format(assessment=step["assessment"], note=_quoted(step["note"])))
        self.drew_figures = True

    def _differential(self) -> Generator[Event, None, None]:
        self.lines.append(_templates()["differential"])
        return
        yield  # a generator like every intent, though it runs no tool

    # -- wording ----------------------------------------------------------------------------------

    def _finding_line(self, finding: Finding) -> str:
        size = f", {_size_text(finding)}" if finding.gaussian is not None and finding.gaussian.converged else ""
        return _templates()["finding_line"].format(id=finding.id, label=finding.label, location=self.location(finding),
                                                   slice_text=self._slice_text(finding), size=size,
                                                   confidence=finding.confidence,
                                                   verification=_verification_words(finding))

    def location(self, finding: Finding) -> str:
        return location_in_words(self.ctx.view(finding.study_id).study, finding)

    def _slice_text(self, finding: Finding) -> str:
        """' on slice 6 of 10, table position -191.5 mm' on a series; '' on a single image."""
        words = slice_words(self.ctx.view(finding.study_id).study, finding.frame)
        return f" on {words}" if words else ""


def _note_and_mark(message: str, assessment: str) -> tuple[str, dict[str, list[float]] | None]:
    """The clinician's note (the message without the command word and the mark) and their mark
    as verify-style arguments: [y, x] is a point, [ymin, xmin, ymax, xmax] a box (0–1000)."""
    mark = None
    found = _MARK.search(message)
    if found:
        numbers = [float(v) for v in found.group(1).split(",")]
        mark = {2: {"point": numbers}, 4: {"box_2d": numbers}}.get(len(numbers))
        message = message[:found.start()] + message[found.end():]
    words = load_table("planner.toml")["second_read_commands"][assessment]
    hit = next((m for m in (_keyword(message.lower(), k) for k in words) if m), None)
    if hit is not None:
        before, after = message[:hit.start()].strip(_NOTE_TRIM), message[hit.end():].strip(_NOTE_TRIM)
        message = after or (before if len(before.split()) > 1 else "")  # "I disagree" has no note
    return message.strip(_NOTE_TRIM), mark


def _quoted(note: str) -> str:
    return f' — "{note}"' if note else ""


def _size_text(finding: Finding) -> str:
    if finding.size_mm is not None:
        return f"{finding.size_mm[0]:.1f} × {finding.size_mm[1]:.1f} mm"
    if finding.size_px is not None:
        return f"{finding.size_px[0]:.0f} × {finding.size_px[1]:.0f} px (no pixel spacing)"
    return "size not measured"


def _verification_words(finding: Finding) -> str:
    verification = finding.verification
    if verification is None:
        return "not verified"
    reason = f" ({verification.reasons[0]})" if verification.reasons else ""
    return f"{verification.status}{reason}"


def _describe_brief(finding: Finding) -> str:
    return f"{finding.id} ({finding.label}, confidence {finding.confidence:.2f})"


def comparison_lines(output: dict[str, Any]) -> list[str]:
    """``compare_with_prior``'s output in the answer's words: the summary, then a line per finding."""
    t = _templates()
    lines = [output["summary"]]
    for item in output["findings"]:
        template = t["compare_line"] if item.get("change") else t[f"compare_{item['status']}"]
        lines.append(template.format(**_comparison_facts(item)))
    if output.get("message"):
        lines.append(output["message"])
    return lines


def _comparison_facts(item: dict[str, Any]) -> dict[str, Any]:
    def size(where: dict[str, Any] | None) -> str:
        return LesionThere.model_validate(where).size_text() if where else "not measured"

    change = item.get("change") or {}
    doubling = change.get("doubling_time_days")
    return {"id": item["id"], "status": item["status"], "prior": size(item.get("prior")),
            "current": size(item.get("current")), "pct": round(change.get("mean_diameter_pct", 0.0)) + 0.0,
            "threshold": change.get("threshold", 0.0), "unit": change.get("unit", "mm"),
            "doubling": f"; volume doubling time {doubling:.0f} days" if doubling else "",
            "note": item.get("note", "")}
