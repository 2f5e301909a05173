"""The clinician's report actions on a conversation: edit, restore, sign, diff, export.

The model changes a report only through the ``revise_report`` tool; these functions are what the
clinician does directly (in the app or on the command line). Every action creates a version,
is committed with the session, and lands in the audit trail.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import TypeAdapter

from agent.conversation import Conversation
from agent.toolbox import run_tool
from tools.draft_report import ReportOutput
from tools.report.document import ClinicalReport, ReportError, ReportHistory
from tools.report.markdown import report_markdown
from tools.revise_report import RevisionEdit, history_of, revise

ExportFormat = Literal["md", "pdf", "sr", "json"]
_EDITS = TypeAdapter(list[RevisionEdit])

if TYPE_CHECKING:
    from agent.pacs.send import StoredInstance
    from tools.study import Study


@dataclass(frozen=True)
class ExportFile:
    name: str
    mime_type: str
    data: bytes


def history(conversation: Conversation, study_id: str | None = None) -> ReportHistory:
    return history_of(conversation.ctx, study_id)


def clinician_edit(conversation: Conversation, edits: list[dict[str, Any]], *, name: str, reason: str,
                   study_id: str | None = None) -> ReportOutput:
    """The clinician's own edits (sizes they measured are accepted, marked as theirs)."""
    output = revise(conversation.ctx, _EDITS.validate_python(edits), author="clinician", author_name=name,
                    reason=reason, study_id=study_id)
    conversation.save()
    return output


def restore(conversation: Conversation, version: int, *, name: str, study_id: str | None = None) -> ClinicalReport:
    restored = history(conversation, study_id).restore(version, author="clinician", author_name=name)
    conversation.save()
    return restored


def sign(conversation: Conversation, version: int, *, name: str, study_id: str | None = None) -> ClinicalReport:
    """Sign ``version`` (the current one); the signed version can no longer change."""
    signed = history(conversation, study_id).sign(version, name)
    conversation.save()
    return signed


def _version(conversation: Conversation, version: int | None, study_id: str | None) -> ClinicalReport:
    """Report ``version`` of the study (default the current one)."""
    report_history = history(conversation, study_id)
    return report_history.current if version is None else report_history.version(version)


def markdown(report: ClinicalReport) -> str:
    return report_markdown(report)


def diff(conversation: Conversation, old: int, new: int, study_id: str | None = None) -> str:
    return history(conversation, study_id).diff(old, new, report_markdown)


@dataclass(frozen=True)
class ExportOption:
    """A download the app can offer without making it yet (made on click)."""

    kind: str  # md | pdf | sr-measurements | sr-narrative | json
    label: str
    file_name: str
    mime_type: str


def export_options(conversation: Conversation, version: int, study_id: str | None = None
                   ) -> tuple[list[ExportOption], list[str]]:
    """What can be exported for ``version`` (cheap: nothing is rendered), and notes on what cannot."""
    report = history(conversation, study_id).version(version)
    stem = f"report-v{report.version}-{report.status}"
    options = [ExportOption("md", "Markdown", f"{stem}.md", "text/markdown"),
               ExportOption("pdf", "PDF", f"{stem}.pdf", "application/pdf")]
    notes = []
    if conversation.ctx.view(report.study_id).study.safe.kind == "raster":
        notes.append("This study is a PNG/JPEG image: there is no source DICOM to reference, so no DICOM SR.")
    else:
        if report.findings:
            options.append(ExportOption("sr-measurements", "SR (measurements)", f"{stem}-measurements-sr.dcm",
                                        "application/dicom"))
        options.append(ExportOption("sr-narrative", "SR (narrative)", f"{stem}-narrative-sr.dcm", "application/dicom"))
    options.append(ExportOption("json", "JSON", f"{stem}.json", "application/json"))
    return options, notes


def export_bytes(conversation: Conversation, option: ExportOption, version: int, study_id: str | None = None) -> bytes:
    """Make one export (called when the clinician clicks its download)."""
    files, notes = export(conversation, ["sr" if option.kind.startswith("sr") else option.kind], version=version,
                          study_id=study_id)
    for file in files:
        if file.name == option.file_name:
            return file.data
    raise ReportError(notes[0] if notes else f"{option.label} could not be made.")


def export(conversation: Conversation, formats: list[ExportFormat], *, version: int | None = None,
           study_id: str | None = None) -> tuple[list[ExportFile], list[str]]:
    """The report version (default current) in each format, and notes on what could not be made."""
    report = _version(conversation, version, study_id)
    stem = f"report-v{report.version}-{report.status}"
    files, notes = [], []
    for fmt in formats:
        try:
            files += _exported(conversation, report, fmt, stem)
        except ReportError as error:
            notes.append(str(error))
    notes += _prior_note(conversation, report, formats)
    if conversation.recorder is not None:
        conversation.recorder.audit("report_exported", {"version": report.version, "status": report.status,
                                                        "formats": [f.name.rsplit(".", 1)[-1] for f in files]})
    return files, notes


def _exported(conversation: Conversation, report: ClinicalReport, fmt: ExportFormat, stem: str) -> list[ExportFile]:
    if fmt == "md":
        return [ExportFile(f"{stem}.md", "text/markdown", report_markdown(report).encode())]
    if fmt == "json":
        return [ExportFile(f"{stem}.json", "application/json",
                           json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False).encode())]
    if fmt == "pdf":
        from tools.report.pdf import report_pdf

        image, caption = _key_image(conversation, report)
        return [ExportFile(f"{stem}.pdf", "application/pdf",
                           report_pdf(report, key_image_png=image, key_image_caption=caption))]
    from tools.report.sr import report_sr

    study = conversation.ctx.view(report.study_id).study
    measurements, narrative = report_sr(report, study, conversation.ctx.findings,
                                        prior=_prior_study(conversation, report))
    files = [ExportFile(f"{stem}-narrative-sr.dcm", "application/dicom", _dicom_bytes(narrative))]
    if measurements is not None:  # a report without findings has nothing to measure
        files.insert(0, ExportFile(f"{stem}-measurements-sr.dcm", "application/dicom", _dicom_bytes(measurements)))
    return files


def _prior_study(conversation: Conversation, report: ClinicalReport) -> Study | None:
    """The prior the report's comparison names, if it is still open in the session."""
    if report.comparison is None:
        return None
    view = conversation.ctx.views.get(report.comparison.prior_study_id)
    return None if view is None else view.study


def _prior_note(conversation: Conversation, report: ClinicalReport, formats: list[ExportFormat]) -> list[str]:
    """Why a DICOM SR names the prior but cannot reference its images."""
    if "sr" not in formats or report.comparison is None or _prior_study(conversation, report) is not None:
        return []
    return ["The prior this report was compared with is no longer open, so the DICOM SR names it but does not "
            "reference its images; open the prior again to include them."]


def _key_image(conversation: Conversation, report: ClinicalReport) -> tuple[bytes | None, str]:
    """The annotated overlay of the report's findings (on the first finding's frame), always in
    the light theme: a PDF is printed on white, whatever the page's theme."""
    ctx = conversation.ctx
    view = ctx.view(report.study_id)
    shown_frame = view.frame  # the clinician's slice: an export must not move the viewer
    if report.findings:
        view.frame = report.findings[0].frame
    ids = [f.finding_id for f in report.findings if f.frame == view.frame]
    page_theme, ctx.figure_theme = ctx.figure_theme, "light"
    try:
        result = run_tool(ctx, "render_overlay", {"layers": ["annotated"], "finding_ids": ids,
                                                   "study_id": report.study_id})
    finally:
        ctx.figure_theme, view.frame = page_theme, shown_frame
    artifact = result.artifacts[0] if result.artifacts else None
    return (artifact.data, artifact.caption) if artifact else (None, "")


def _dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- the PACS --------------------------------------------------------------------------------------

#: What of an export goes to the PACS: the DICOM SRs, and the PDF as an Encapsulated PDF instance.
PACS_FORMATS: list[ExportFormat] = ["sr", "pdf"]


def pacs_documents(conversation: Conversation, files: list[ExportFile], *, version: int | None = None,
                   study_id: str | None = None) -> list[tuple[ExportFile, Any]]:
    """The exported ``files`` that go to the PACS, each with its DICOM data set: the SRs as
    exported (same instance UIDs as the local files), the PDF encapsulated into the source study."""
    from pydicom import dcmread

    from tools.report.encapsulated_pdf import encapsulated_pdf

    report = _version(conversation, version, study_id)
    documents = []
    for file in files:
        if file.name.endswith("-sr.dcm"):
            documents.append((file, dcmread(io.BytesIO(file.data))))
        elif file.mime_type == "application/pdf":
            study = conversation.ctx.view(report.study_id).study
            dataset = encapsulated_pdf(file.data, report, study, conversation.ctx.findings)
            documents.append((ExportFile(file.name.removesuffix(".pdf") + "-pdf.dcm", "application/dicom",
                                         _dicom_bytes(dataset)), dataset))
    if not documents:
        raise ReportError("Nothing to send to the PACS: it takes the DICOM SR and the PDF of a report.")
    return documents


def send_to_pacs(conversation: Conversation, documents: list[tuple[ExportFile, Any]], *, allow_draft: bool,
                 version: int | None = None, study_id: str | None = None) -> list[StoredInstance]:
    """Store ``documents`` (from ``pacs_documents``) in their source study on the configured PACS
    and confirm by QIDO that they arrived. A draft goes only when ``allow_draft`` (it says it is
    a draft in the SR's flags and the PDF's title and pages). The study must be on that PACS."""
    from agent.pacs.client import PacsConnection, PacsError, PacsNotFoundError
    from agent.pacs.search import study as pacs_study
    from agent.pacs.send import store_in_study

    report = _version(conversation, version, study_id)
    if report.status != "signed" and not allow_draft:
        raise ReportError(f"Version {report.version} is a draft: sign it before sending it to the PACS, or send "
                          "it as a draft on purpose.")
    study_uid = str(documents[0][1].StudyInstanceUID)
    connection = PacsConnection(conversation.settings)
    try:
        pacs_study(connection, study_uid)
    except PacsNotFoundError as error:
        raise PacsError("The source study is not on the PACS, so the report was not sent there (open the study "
                        "from the PACS, or store its images there first).") from error
    labels = {"measurements": "measurement SR", "narrative": "narrative SR", "pdf": "PDF"}
    stored = store_in_study(connection, study_uid, [
        (next((label for key, label in labels.items() if f"-{key}" in file.name), file.name), dataset)
        for file, dataset in documents])
    if conversation.recorder is not None:
        conversation.recorder.audit("report_sent_to_pacs", {
            "version": report.version, "status": report.status,
            "instances": [{"sop_instance_uid": s.sop_instance_uid, "what": s.description} for s in stored]})
    return stored
