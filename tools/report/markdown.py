"""A report version as Markdown: what the clinician reads, diffs and exports."""

from __future__ import annotations

from tools.report.document import ClinicalReport


def report_markdown(report: ClinicalReport) -> str:
    status = (f"SIGNED by {report.signed_by} ({report.created_at:%Y-%m-%d %H:%M} UTC)" if report.status == "signed"
              else "DRAFT — not signed")
    modality = report.study.modality or "Imaging"
    lines = [f"# {modality} report — {status}", "",
             f"*Version {report.version}, {_author(report)}{': ' + report.reason if report.reason else ''}.*", "",
             "## Technique", "", report.study.technique, "", "## Findings", ""]
    if report.findings:
        lines += ["| id | location | size | characteristics | confidence | verification |",
                  "|---|---|---|---|---:|---|"]
        for f in report.findings:
            size = f.size.text() + (" (clinician)" if f.size and f.size.source == "clinician" else "") if f.size else "—"
            confidence = "—" if f.confidence is None else f"{f.confidence:.2f}"
            lines.append(f"| {f.finding_id} | {_cell(f.location)} | {size} | {_cell(f.characteristics) or '—'} | "
                         f"{confidence} | {f.verification} |")
    else:
        lines.append(report.findings_statement)
    lines += ["", "## Impression", "", report.impression, ""]
    if report.recommendations:
        lines += ["## Recommendations", "", *[f"- {r}" for r in report.recommendations], ""]
    lines += ["## Limitations", "", *[f"- {item}" for item in report.limitations], ""]
    return "\n".join(lines)


def _author(report: ClinicalReport) -> str:
    if report.author == "clinician":
        return f"by {report.author_name or 'the clinician'}"
    return "drafted by Loupe" if report.author == "loupe" else "edited by the model"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")
