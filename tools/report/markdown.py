"""A report version as Markdown: what the clinician reads, diffs and exports."""

from __future__ import annotations

from tools.report.document import ClinicalReport, ReportFinding


def report_markdown(report: ClinicalReport) -> str:
    status = (f"SIGNED by {report.signed_by} ({report.created_at:%Y-%m-%d %H:%M} UTC)" if report.status == "signed"
              else "DRAFT — not signed")
    modality = report.study.modality or "Imaging"
    lines = [f"# {modality} report — {status}", "",
             f"*Version {report.version}, {_author(report)}{': ' + report.reason if report.reason else ''}.*", "",
             "## Technique", "", report.study.technique, "",
             # Radiology reports name the prior between the technique and the findings.
             "## Comparison", "", " ".join(report.comparison_sentences), "", "## Findings", ""]
    if report.findings:
        lines += _findings_table(report)
    else:
        lines.append(report.findings_statement)
    lines += ["", "## Impression", "", report.impression, ""]
    if report.recommendations:
        lines += ["## Recommendations", "", *[f"- {r}" for r in report.recommendations], ""]
    lines += ["## Limitations", "", *[f"- {item}" for item in report.shown_limitations], ""]
    return "\n".join(lines)


def _findings_table(report: ClinicalReport) -> list[str]:
    """The findings as a table; on a series, with each finding's slice and table position."""
    series = report.study.frames > 1
    slice_head, slice_rule = ("slice | table position | ", "---:|---:|") if series else ("", "")
    lines = [f"| id | {slice_head}location | size | measured by | characteristics | confidence | verification |",
             f"|---|{slice_rule}---|---|---|---|---:|---|"]
    for f in report.findings:
        size, who = (f.size.text(), f.size.measured_by) if f.size else ("—", "—")
        confidence = "—" if f.confidence is None else f"{f.confidence:.2f}"
        slice_cells = f"{slice_number(report, f)} | {table_position(f)} | " if series else ""
        lines.append(f"| {f.finding_id} | {slice_cells}{_cell(f.location)} | {size} | {who} | "
                     f"{_cell(f.characteristics) or '—'} | {confidence} | {f.verification} |")
    return lines


def slice_number(report: ClinicalReport, finding: ReportFinding) -> str:
    return f"{finding.frame + 1} of {report.study.frames}"


def table_position(finding: ReportFinding) -> str:
    return "—" if finding.table_position_mm is None else f"{finding.table_position_mm:.1f} mm"


def _author(report: ClinicalReport) -> str:
    if report.author == "clinician":
        return f"by {report.author_name or 'the clinician'}"
    return "drafted by Loupe" if report.author == "loupe" else "edited by the model"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")
