"""The tool registry: one table from tool name to input model, output model and function.

The model-facing declaration of a tool is derived here from its pydantic input model (JSON
Schema with per-argument descriptions) and the first paragraph of its function's docstring, so
the code and what the model is told cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tools import load_study
from tools.context import ToolContext, ToolResult


@dataclass(frozen=True)
class Tool:
    """One registered tool."""

    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    function: Callable[[ToolContext, Any], ToolResult]

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.function) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    def declaration(self) -> dict[str, Any]:
        """Name, description and JSON-Schema parameters, as a model API expects them."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.input_model.model_json_schema(),
        }

    def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
        """Validate ``arguments`` with the input model (pydantic.ValidationError if bad) and run."""
        return self.function(ctx, self.input_model.model_validate(arguments))


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("load_study", load_study.LoadStudyInput, load_study.LoadStudyOutput, load_study.load_study),
    )
}
