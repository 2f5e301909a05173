"""Executing one tool call for a conversation, whichever backend asked for it.

Every outcome is data: success carries the tool's output and images; an unknown tool, invalid
arguments or a failing tool carry one sentence the model can act on (and the clinician can
read). Nothing raised by a tool escapes into the conversation loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent.events import ToolFailed, ToolFinished
from agent.toolbox import run_tool
from tools.context import Artifact, ToolContext
from tools.errors import LoupeError

log = logging.getLogger(__name__)


@dataclass
class ToolOutcome:
    name: str
    args: dict[str, Any]
    ok: bool
    duration_ms: float
    output: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None

    def response(self) -> dict[str, Any]:
        """The function response a model receives."""
        return {"output": self.output} if self.ok else {"error": self.error}

    @property
    def summary(self) -> str:
        return summarise(self.name, self.output) if self.ok else (self.error or "failed")

    def event(self, call_id: str) -> ToolFinished | ToolFailed:
        """The event that reports this outcome to the UI, the CLI and the store."""
        if self.ok:
            return ToolFinished(call_id=call_id, name=self.name, summary=self.summary, output=self.output,
                                artifacts=self.artifacts, duration_ms=self.duration_ms)
        return ToolFailed(call_id=call_id, name=self.name, args=self.args, message=self.error or "failed",
                          duration_ms=self.duration_ms)


def execute(ctx: ToolContext, name: str, args: dict[str, Any] | None) -> ToolOutcome:
    """Run tool ``name`` with ``args`` against the session's tool context."""
    arguments = dict(args or {})
    started = time.perf_counter()
    try:
        result = run_tool(ctx, name, arguments)
    except LoupeError as error:
        return ToolOutcome(name, arguments, ok=False, duration_ms=_since(started), error=str(error))
    except Exception:  # a tool bug must not end the conversation; it is logged in full
        log.exception("tool %s failed unexpectedly", name)
        return ToolOutcome(name, arguments, ok=False, duration_ms=_since(started),
                           error=f"{name} failed with an internal error; try different arguments or another tool.")
    return ToolOutcome(name, arguments, ok=True, duration_ms=_since(started),
                       output=result.output.model_dump(mode="json"), artifacts=list(result.artifacts))


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def summarise(name: str, output: dict[str, Any]) -> str:
    """One line describing a tool's result, for status boxes and logs."""
    if name == "load_study":
        summary = output.get("summary", {})
        window = output.get("window")
        text = f"{summary.get('modality') or 'image'} {summary.get('columns')}×{summary.get('rows')}, frame {output.get('frame', 0) + 1} of {summary.get('frames')}"
        return text + (f", window {window['center']:g}/{window['width']:g}" if window else "")
    if name in ("detect_anomalies", "compare_with_prior"):
        return str(output.get("summary", ""))
    if name == "verify_coordinates":
        x, y = output.get("center_px", (0, 0))
        return f"{output.get('status')}: centre ({x:.0f}, {y:.0f}) px"
    if name == "fit_gaussian":
        return "; ".join(_fit_line(fit) for fit in output.get("results", [])) or str(output.get("message", ""))
    if name == "render_overlay":
        return f"{len(output.get('artifacts', []))} image(s): {', '.join(output.get('layers', []))}"
    if name in ("draft_report", "revise_report"):  # the report panel shows the document itself
        return f"report version {output.get('version')} ({output.get('status')})"
    return ", ".join(f"{key}={value}" for key, value in list(output.items())[:3])


def _fit_line(fit: dict[str, Any]) -> str:
    size = fit.get("size_mm") or fit.get("size_px")
    unit = "mm" if fit.get("size_mm") else "px"
    return f"{fit['finding_id']}: {size[0]:.1f} × {size[1]:.1f} {unit}" if size else f"{fit['finding_id']}: not measured"
