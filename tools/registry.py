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

from tools import (
    detect_anomalies,
    draft_report,
    fit_gaussian,
    load_study,
    render_overlay,
    revise_report,
    set_finding_size,
    verify_coordinates,
)
from tools.compare_with_prior import compare as compare_with_prior
from tools.context import ToolContext, ToolResult
from tools.render.style import figure_theme
from tools.second_read import flow as second_read


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

    def validate(self, arguments: dict[str, Any]) -> BaseModel:
        """The arguments as the input model (pydantic.ValidationError if they are invalid)."""
        return self.input_model.model_validate(arguments)

    def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
        """Validate ``arguments`` and run the tool."""
        return self.call(ctx, self.validate(arguments))

    def call(self, ctx: ToolContext, validated: BaseModel) -> ToolResult:
        """Run the tool on validated arguments, its figures in the page's theme."""
        with figure_theme(ctx.figure_theme):
            return self.function(ctx, validated)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("load_study", load_study.LoadStudyInput, load_study.LoadStudyOutput, load_study.load_study),
        Tool("detect_anomalies", detect_anomalies.DetectAnomaliesInput, detect_anomalies.DetectAnomaliesOutput,
             detect_anomalies.detect_anomalies),
        Tool("verify_coordinates", verify_coordinates.VerifyCoordinatesInput,
             verify_coordinates.VerifyCoordinatesOutput, verify_coordinates.verify_coordinates),
        Tool("fit_gaussian", fit_gaussian.FitGaussianInput, fit_gaussian.FitGaussianOutput, fit_gaussian.fit_gaussian),
        Tool("set_finding_size", set_finding_size.SetFindingSizeInput, set_finding_size.SetFindingSizeOutput,
             set_finding_size.set_finding_size),
        Tool("render_overlay", render_overlay.RenderOverlayInput, render_overlay.RenderOverlayOutput,
             render_overlay.render_overlay),
        Tool("draft_report", draft_report.DraftReportInput, draft_report.ReportOutput, draft_report.draft_report),
        Tool("revise_report", revise_report.ReviseReportInput, draft_report.ReportOutput, revise_report.revise_report),
        Tool("start_second_read", second_read.StartSecondReadInput, second_read.StartSecondReadOutput,
             second_read.start_second_read),
        Tool("second_read_step", second_read.SecondReadStepInput, second_read.SecondReadStepOutput,
             second_read.second_read_step),
        Tool("record_assessment", second_read.RecordAssessmentInput, second_read.RecordAssessmentOutput,
             second_read.record_assessment),
        Tool("second_read_summary", second_read.SecondReadSummaryInput, second_read.SecondReadSummaryOutput,
             second_read.second_read_summary),
        Tool("compare_with_prior", compare_with_prior.CompareWithPriorInput, compare_with_prior.CompareWithPriorOutput,
             compare_with_prior.compare_with_prior),
    )
}


def model_declarations() -> list[dict[str, Any]]:
    """Every tool's declaration with a plain JSON Schema, the form model APIs take (Gemini's and
    the OpenAI-compatible servers' alike)."""
    return [{**declaration, "parameters": plain_json_schema(declaration["parameters"])}
            for declaration in (tool.declaration() for tool in TOOLS.values())]


def plain_json_schema(schema: Any) -> Any:
    """The JSON Schema without OpenAPI's ``discriminator`` (not JSON Schema; an API's subset may
    refuse it): a tagged union becomes ``anyOf``, each branch still fixing its ``op``."""
    if isinstance(schema, dict):
        return {("anyOf" if key == "oneOf" else key): plain_json_schema(value)
                for key, value in schema.items() if key != "discriminator"}
    if isinstance(schema, list):
        return [plain_json_schema(item) for item in schema]
    return schema
