"""Running registered tools on behalf of a caller (the UI now, the agent loop later).

Arguments arrive as plain dicts (from a model's function call or a UI widget) and are validated
by the tool's input model; a validation failure or an unknown tool becomes a ``ToolCallError``
whose message can go back to the model or to the clinician.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from tools.context import ToolContext, ToolResult
from tools.detection.detector import Detector
from tools.detection.performance import PerformanceTable, read_table, shipped_table
from tools.errors import LoupeError
from tools.registry import TOOLS


class ToolCallError(LoupeError):
    """A tool call that cannot run as asked: unknown tool or invalid arguments."""


def new_context(settings: LoupeSettings) -> ToolContext:
    return ToolContext(limits=settings.study_limits(), detector=detector_for(settings),
                       performance=performance_for(settings))


def performance_for(settings: LoupeSettings) -> PerformanceTable:
    """The offline detector's performance table: the site's own (``LOUPE_PERFORMANCE_TABLE``) or
    the shipped one."""
    if settings.performance_table is None:
        return shipped_table()
    return read_table(settings.performance_table)


def detector_for(settings: LoupeSettings) -> Detector | None:
    """The trained detector ``LOUPE_DETECTOR_MODEL`` names, if any (None: the classical one alone)."""
    if settings.detector_model is None:
        return None
    from tools.detection.onnx_detector import OnnxDetector

    return OnnxDetector(settings.detector_model)


def run_tool(ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
    """Validate and run tool ``name``; LoupeError subclasses propagate unchanged."""
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolCallError(f"There is no tool called '{name}'; available: {', '.join(sorted(TOOLS))}.")
    try:
        validated = tool.validate(arguments)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc']) or 'arguments'}: {issue['msg']}" for issue in error.errors()
        )
        raise ToolCallError(f"The arguments for {name} are invalid ({problems}).") from error
    # Outside the try: a validation error raised inside the tool is a bug, not the caller's fault.
    return tool.call(ctx, validated)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def save_upload(upload_dir: Path, name: str, data: bytes) -> Path:
    """Store uploaded bytes under a content-addressed folder; return the file's path.

    The original name is reduced to safe characters (it may still carry PHI, so it stays on
    this machine), and the folder is keyed by content so a re-upload reuses it.
    """
    digest = hashlib.sha256(data).hexdigest()[:20]
    folder = upload_dir / digest
    folder.mkdir(parents=True, exist_ok=True)
    safe_name = _UNSAFE_NAME.sub("_", Path(name).name).strip("._") or "upload"
    target = folder / safe_name
    if not target.exists():
        write_atomically(target, data)
    return target
