"""``loupe report``: draft a report for a study, or export / sign one from a stored session.

- ``loupe report STUDY --out DIR`` — new session: analyse (detect, verify, fit), draft, export.
- ``loupe report --session ID --out DIR [--version N] [--impression TEXT] [--sign NAME]`` — from a
  stored session. ``--impression`` is the reading physician's own Impression (a new version by the
  clinician); a report is signed only once it has one (Loupe leaves it to the physician when its
  search found nothing).

``--format`` takes ``md,pdf,sr,json`` (default all). ``--send`` also stores the SR(s) and the PDF (as
an Encapsulated PDF instance, also written to DIR) in the source study on the PACS and prints
their SOP instance UIDs; a failed store exits 2 with one sentence and keeps the local files. PNG/JPEG studies have no source DICOM to
reference, so their SR is skipped with a note; the other formats are still written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.parsing import BACKENDS, backend_choice, study_path
from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from tools.errors import LoupeError

if TYPE_CHECKING:
    from agent.conversation import Conversation

FORMATS = ("md", "pdf", "sr", "json")


def add_parser(commands) -> None:
    report = commands.add_parser("report", help="Draft a report for a study, or export / sign one from a session.")
    report.add_argument("paths", nargs="*", metavar="STUDY", help="Study to analyse and report on (a new session).")
    report.add_argument("--session", help="A stored session: export (or continue) its report.")
    report.add_argument("--out", required=True, type=Path, help="Folder for the exported files.")
    report.add_argument("--format", default="md,pdf,sr,json", help="Comma-separated: md, pdf, sr, json (default all).")
    report.add_argument("--version", type=int, help="Report version to export (default the current one).")
    report.add_argument("--impression", metavar="TEXT",
                        help="Your Impression (a new version, by --sign NAME or the login name), e.g. before signing.")
    report.add_argument("--sign", metavar="NAME", help="Sign the current version as this physician, then export it.")
    report.add_argument("--send", action="store_true",
                        help="Also store the SR(s) and PDF in the study on the PACS (LOUPE_DICOMWEB_URL), draft or signed.")
    report.add_argument("--backend", choices=BACKENDS, default=None)
    report.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    report.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                        help="You checked the image: no identifying text on it, so Gemini may see its pixels.")
    report.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    study = study_path(args.paths, settings) if args.paths else None
    raise SystemExit(run_report(settings, study=study, session_id=args.session, out_dir=args.out,
                                formats=parse_formats(args.format), version=args.version, signer=args.sign,
                                impression=args.impression,
                                backend_name=backend_choice(args.backend), modality=args.modality,
                                confirm_images=args.confirm_images, send=args.send))


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise LoupeError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got '{text}'.")
    return formats


def run_report(settings: LoupeSettings, *, study: Path | None, session_id: str | None, out_dir: Path, formats: list[str],
               version: int | None, signer: str | None, backend_name: str | None, modality: str | None,
               confirm_images: bool, send: bool = False, impression: str | None = None) -> int:
    # Imported here: analysis, backends and exporters load the imaging stack, which the
    # parser of every other command should not wait for.
    from agent.conversation import Conversation
    from agent.reports import clinician_edit, export, sign
    from agent.store.database import Store

    if study is None and session_id is None:
        raise LoupeError("Give a study to report on, or --session ID of a stored session.")
    if send and not {"sr", "pdf"} & set(formats):
        raise LoupeError("--send stores the DICOM SR and the PDF: include sr or pdf in --format.")
    if study is None:
        store = Store.for_data_dir(settings.data_dir, settings.db_url)
        conversation = Conversation.resume(settings, store, session_id, settings.user)
    else:
        conversation = _drafted(settings, study, session_id, backend_name, modality, confirm_images)
    if impression is not None:
        edit = {"op": "set_section", "section": "impression", "text": impression}
        version = clinician_edit(conversation, [edit], name=signer or settings.user, reason="impression").version
    if signer:
        history = conversation.ctx.reports.get(conversation.ctx.current_study_id)
        number = version or (history.current.version if history and history.versions else 1)
        signed = sign(conversation, number, name=signer)
        version = signed.version
    files, notes = export(conversation, formats, version=version)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in files:
        write_atomically(out_dir / file.name, file.data)
        print(out_dir / file.name)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"session: {conversation.session_id}", file=sys.stderr)
    if send and files:
        _send(conversation, files, version, out_dir)
    return 0 if files else 2


def _send(conversation: Conversation, files: list, version: int | None, out_dir: Path) -> None:
    """Store the exported SR(s) and the PDF on the PACS; the request itself allows a draft."""
    from agent.reports import pacs_documents, send_to_pacs

    documents = pacs_documents(conversation, files, version=version)
    for file, _ in documents:
        if not (out_dir / file.name).exists():  # the Encapsulated PDF: kept beside what was sent
            write_atomically(out_dir / file.name, file.data)
            print(out_dir / file.name)
    for stored in send_to_pacs(conversation, documents, allow_draft=True, version=version):
        print(f"stored {stored.sop_instance_uid} {stored.description}")


def _drafted(settings: LoupeSettings, study: Path, session_id: str | None, backend_name: str | None,
             modality: str | None, confirm_images: bool) -> Conversation:
    """A session on ``study`` with its findings analysed and a report drafted."""
    from agent.analysis import analyse_current
    from agent.cli.terminal import open_conversation
    from agent.models.factory import make_backend
    from agent.toolbox import run_tool

    conversation = open_conversation(settings, study, modality=modality, session_id=session_id)
    if confirm_images:
        conversation.confirm_no_burned_in_text()
    backend = make_backend(settings, backend_name)
    if backend.name in ("gemini", "openai"):  # the model proposes locations and words the report
        backend.attach(conversation, conversation.usage)
    analyse_current(conversation.ctx)
    run_tool(conversation.ctx, "draft_report", {})
    conversation.save()
    return conversation
