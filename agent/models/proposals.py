"""Reading a vision model's detection answer: tolerant parsing, strict validation.

The model is asked for a JSON array of ``{"box_2d": [ymin, xmin, ymax, xmax], "label",
"confidence"}`` in 0–1000 (other servers' models may write boxes in another ``BoxFormat``: they
are converted to that first). Answers may come wrapped in Markdown fences, with stray text
around the array, or as an object holding the array (``{"findings": [...]}``); that is tolerated. Boxes that are not four numbers, fall outside 0–1000, or
have their corners out of order (e.g. x first) are rejected with a reason, never repaired by
guessing; at most ``MAX_PROPOSALS`` are kept.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tools.context import VisionProposal
from tools.coordinates import BoxFormat, box_to_box_2d

MAX_PROPOSALS = 25
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class ParsedProposals:
    proposals: list[VisionProposal] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def parse_proposals(text: str | None, sample: int = 0, *, box_format: BoxFormat = "yxyx-1000",
                    sent_size: tuple[int, int] | None = None) -> ParsedProposals:
    """The valid proposals in ``text`` and, for each rejected item, why. Boxes written in
    ``box_format`` are converted to ``box_2d`` first (``sent_size`` = the sent image's width and
    height, needed for ``xyxy-px``)."""
    result = ParsedProposals()
    items = _json_array(text or "")
    if items is None:
        result.rejected.append("the answer contained no JSON array")
        return result
    for index, item in enumerate(items):
        if len(result.proposals) >= MAX_PROPOSALS:
            result.rejected.append(f"more than {MAX_PROPOSALS} boxes; the rest were ignored")
            break
        item = _in_box_2d(item, box_format, sent_size)
        problem = _box_problem(item)
        if problem:
            result.rejected.append(f"item {index + 1}: {problem}")
            continue
        label = item.get("label")
        result.proposals.append(VisionProposal(box_2d=[float(v) for v in item["box_2d"]],
                                               label=str(label)[:80] if label else "", sample=sample))
    return result


def _json_array(text: str) -> list[Any] | None:
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else [text]
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):  # an object holding the list, or a single box
            value = _held_list(value) or [value]
        if isinstance(value, list):
            return value
    return None


def _held_list(value: dict[str, Any]) -> list[Any] | None:
    """The list of boxes an object holds (``{"findings": [{"box_2d": ...}]}``), if any."""
    if "box_2d" in value:
        return None
    for held in value.values():
        if isinstance(held, list) and (not held or any(isinstance(i, dict) and "box_2d" in i for i in held)):
            return held
    return None


def _in_box_2d(item: Any, box_format: BoxFormat, sent_size: tuple[int, int] | None) -> Any:
    """``item`` with its box converted to box_2d; left as it is when it is not four numbers
    (``_box_problem`` then says why)."""
    if box_format == "yxyx-1000" or not isinstance(item, dict):
        return item
    box = item.get("box_2d")
    numbers = isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not numbers:
        return item
    width, height = sent_size or (1, 1)
    return {**item, "box_2d": box_to_box_2d(box, box_format, width, height)}


def _box_problem(item: Any) -> str | None:
    if not isinstance(item, dict) or "box_2d" not in item:
        return "no box_2d"
    box = item["box_2d"]
    if not isinstance(box, list) or len(box) != 4:
        return "box_2d must be four numbers [ymin, xmin, ymax, xmax]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return "box_2d must contain numbers only"
    if not all(0 <= v <= 1000 for v in box):
        return "box_2d outside 0–1000"
    ymin, xmin, ymax, xmax = box
    if ymin >= ymax or xmin >= xmax:
        return "box_2d corners out of order (expected [ymin, xmin, ymax, xmax])"
    return None
