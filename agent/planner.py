"""The offline planner: the same interface as the Gemini backend, no model.

It maps the clinician's message to intents (keywords in ``prompts/planner.toml``), runs the real
tools for them in a fixed order, and answers from the templates there, citing finding ids and
measurements. It never pretends to reason: questions that need a model get a plain "I cannot
do that offline" and a list of what it can do.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from typing import Any

from agent.conversation import Conversation, Turn
from agent.events import AssistantText, Event, ToolStarted
from agent.tool_calls import ToolOutcome, execute
from prompts import load_table
from tools.coordinates import BoxPx, SentImage, box_2d_to_px
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.findings import Finding
from tools.location import location_in_words

#: Intents in the order their tools run and their answers are written.
INTENT_ORDER = ("window", "frame", "analyse", "where", "size", "heatmap", "crops", "statistics",
                "revise", "report", "second_read", "differential")


def classify(message: str) -> list[str]:
    """The intents a message expresses, in ``INTENT_ORDER``."""
    text = f" {message.lower()} "
    keywords = load_table("planner.toml")["intents"]
    intents = [intent for intent in INTENT_ORDER if any(k in text for k in keywords.get(intent, ()))]
    if "revise" in intents and "report" in intents:
        intents.remove("report")  # "remove F2 from the report" revises the report; it is not a new draft
    if not intents and any(k in text for k in keywords["subject"]):
        intents = ["analyse"]
    return intents


def _templates() -> dict[str, str]:
    return load_table("planner.toml")["templates"]


class OfflinePlanner:
    """Answers turns by running a tool plan and filling templates."""

    name = "offline"

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        plan = _Plan(conversation, turn)
        answer = yield from plan.execute(classify(turn.message))
        conversation.note_exchange(turn.message, answer)
        yield AssistantText(text=answer)


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

    def execute(self, intents: list[str]) -> Generator[Event, None, str]:
        t = _templates()
        if self.ctx.current_study_id is None:
            return "No study is open yet; open a DICOM, PNG or JPEG study first."
        if not intents:
            return t["help"]
        for intent in intents:
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
        """Findings on the shown frame (detecting and measuring them first when needed)."""
        view = self.ctx.view()
        existing = [f for f in self.ctx.study_findings(view.study.id) if f.frame == view.frame]
        if existing and not fresh:
            return existing
        detected = yield from self._run("detect_anomalies", {"use_vision_model": False})
        if not detected.ok:
            return []
        findings = self._reported(self.ctx.study_findings(view.study.id))
        if findings:
            yield from self._run("fit_gaussian", {"finding_ids": [f.id for f in findings]})
        return [f for f in self.ctx.study_findings(view.study.id) if f.frame == view.frame]

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
        searched = f"frame {view.frame + 1} of {view.study.frame_count}" if view.study.frame_count > 1 else "the image"
        self.lines.append(t["analysed"].format(where_searched=searched))
        reported = self._reported(findings)
        called = [f for f in reported if f.confidence >= ANOMALY_THRESHOLD]
        if not called:
            top = _describe_brief(reported[0]) if reported else "none"
            self.lines.append(t["no_anomaly"].format(threshold=ANOMALY_THRESHOLD, top=top))
        else:
            self.lines.append(t["anomalies"].format(count=len(called), threshold=ANOMALY_THRESHOLD))
            self.lines += [self._finding_line(f) for f in called]
        yield from self._annotated()

    def _where(self) -> Generator[Event, None, None]:
        findings = self._reported((yield from self._findings()))
        for finding in findings:
            frame_text = f" on frame {finding.frame + 1}" if self.ctx.view().study.frame_count > 1 else ""
            self.lines.append(_templates()["where_line"].format(
                id=finding.id, location=self.location(finding), x=finding.center_px[0], y=finding.center_px[1],
                frame_text=frame_text, verification=_verification_words(finding)))
        yield from self._annotated()

    def _size(self) -> Generator[Event, None, None]:
        t = _templates()
        findings = self._reported((yield from self._findings()))
        unfitted = [f.id for f in findings if f.gaussian is None]
        if unfitted:
            yield from self._run("fit_gaussian", {"finding_ids": unfitted})
            findings = [self.ctx.findings[f.id] for f in findings]
        for finding in findings:
            fit = finding.gaussian
            if fit is None or not fit.converged:
                reason = fit.note if fit is not None and fit.note else "the fit did not converge"
                self.lines.append(t["size_unfitted"].format(id=finding.id, reason=reason))
            else:
                self.lines.append(t["size_line"].format(id=finding.id, size_text=_size_text(finding), r2=fit.r_squared))

    def _annotated(self) -> Generator[Event, None, None]:
        if not self.drew_annotated:
            self.drew_annotated = True
            yield from self._draw(["annotated"])

    def _heatmap(self) -> Generator[Event, None, None]:
        yield from self._findings()
        yield from self._draw(["heatmap"])

    def _crops(self) -> Generator[Event, None, None]:
        yield from self._findings()
        yield from self._draw(["crops"])

    def _statistics(self) -> Generator[Event, None, None]:
        yield from self._findings()
        yield from self._draw(["statistics"])

    def _report(self) -> Generator[Event, None, None]:
        yield from self._findings()
        outcome = yield from self._run("draft_report", {"use_model_wording": False})
        if outcome.ok:
            self.lines.append(outcome.output["markdown"])

    def _revise(self) -> Generator[Event, None, None]:
        """Explicit edits the planner can read from a message: removing findings by id."""
        text = self.turn.message
        removed = re.findall(r"\b(F[1-9]\d*)\b", text) if re.search(r"\b(drop|remove|delete)\b", text, re.I) else []
        if not removed:
            self.lines.append(_templates()["revise_needs_model"])
            return
        edits = [{"op": "remove_finding", "finding_id": finding_id} for finding_id in dict.fromkeys(removed)]
        outcome = yield from self._run("revise_report", {"edits": edits, "reason": text.strip()[:200]})
        if outcome.ok:
            self.lines.append(f"Report version {outcome.output['version']}: removed {', '.join(dict.fromkeys(removed))}.")

    def _second_read(self) -> Generator[Event, None, None]:
        findings = yield from self._findings()
        yield from self._annotated()
        t = _templates()
        study = self.ctx.view().study
        regions = _regions(study.modality, study.safe.columns, study.safe.rows)
        self.lines.append(t["second_read_intro"].format(count=len(regions), modality=study.modality or "image"))
        called = [f for f in findings if f.confidence >= ANOMALY_THRESHOLD]
        for index, (name, box) in enumerate(regions, start=1):
            inside = [f for f in called if box.contains(*f.center_px)]
            observation = "; ".join(_describe_brief(f) for f in inside) if inside else "nothing focal"
            self.lines.append(t["second_read_region"].format(index=index, region=name, observation=observation))
        self.lines.append(t["second_read_outro"])

    def _differential(self) -> Generator[Event, None, None]:
        self.lines.append(_templates()["differential"])
        return
        yield  # a generator like every intent, though it runs no tool

    # -- wording ----------------------------------------------------------------------------------

    def _finding_line(self, finding: Finding) -> str:
        size = f", {_size_text(finding)}" if finding.gaussian is not None and finding.gaussian.converged else ""
        return _templates()["finding_line"].format(id=finding.id, label=finding.label, location=self.location(finding),
                                                   size=size, confidence=finding.confidence,
                                                   verification=_verification_words(finding))

    def location(self, finding: Finding) -> str:
        return location_in_words(self.ctx.view().study, finding)


def _regions(modality: str | None, width: int, height: int) -> list[tuple[str, BoxPx]]:
    """The second-read regions of a modality, as native-pixel boxes of a width × height image."""
    table = load_table("planner.toml")["second_read"]
    key = {"CR": "DX"}.get((modality or "").upper(), (modality or "").upper())
    regions = table.get(key, table["default"])["regions"]
    image = SentImage.identity(width, height)
    return [(name, box_2d_to_px(box, image)) for name, box in regions]


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
