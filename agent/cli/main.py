"""The ``loupe`` command line.

Commands (a contract other issues and checks rely on):

- ``loupe info PATH... [--json] [--modality M]`` — study summary; JSON keys include
  ``modality, rows, columns, frames, photometric, pixel_spacing_mm, window, body_part``.
- ``loupe view PATH... --out FILE.png [--frame N] [--window PRESET | --window C,W]`` — the
  display image at native resolution.
- ``loupe analyze STUDY --out DIR [--backend offline|gemini] [--json]`` — load, detect,
  verify, fit, render; writes ``DIR/overlay.png`` and ``DIR/findings.json``.
- ``loupe verify STUDY --box-2d YMIN,XMIN,YMAX,XMAX [--json]`` — verdict on a proposed box.
- ``loupe eval MANIFEST.csv [--backend offline] [--json OUT] [--simulate-proposals SIGMA_PCT [--seed N] [--repeats K]]``.
- ``loupe ask STUDY "question" [--backend auto|gemini|offline] [--json] [--images DIR]`` — one
  conversation turn; ``--json`` prints ``{"answer", "tool_calls": [{"name", "args", "ok",
  "duration_ms"}], "findings", "usage", ...}``.
- ``loupe chat STUDY [--backend ...] [--images DIR]`` — an interactive conversation.
- ``loupe sessions list [--json] | rename ID TITLE | delete ID`` — stored sessions.
- ``loupe report STUDY --out DIR [--format md,pdf,sr,json]`` or ``loupe report --session ID --out DIR
  [--version N] [--sign NAME]`` — draft, sign and export reports.
- ``loupe second-read STUDY [--responses FILE.json] [--json]`` — a guided second read.
- ``loupe deid IN OUT [--map FILE] [--json]`` — a PS3.15 basic-profile de-identified copy.
- ``loupe audit OUT.jsonl [--session ID]`` — the audit trail as JSON lines.
- ``loupe serve [--port N]`` — the app on 127.0.0.1.

Any error: exit code 2 and one line ``error: <message>`` on stderr, never a traceback
(``LOUPE_DEBUG=1`` re-raises unexpected ones for developers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent.store.files import write_atomically
from agent.settings import LoupeSettings
from tools.errors import LoupeError
from tools.study import Study, open_study

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        _fail(message)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loupe", description="Loupe, a clinician's imaging assistant.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="Summarise a study (DICOM file, folder, .zip, PNG/JPEG).")
    info.add_argument("paths", nargs="+", metavar="PATH")
    info.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    info.add_argument("--modality", help="Modality of a PNG/JPEG image (DICOM headers win).")

    view = commands.add_parser("view", help="Write the display image of a frame as PNG.")
    view.add_argument("paths", nargs="+", metavar="PATH")
    view.add_argument("--out", required=True, type=Path, help="PNG file to write.")
    view.add_argument("--frame", type=int, default=0, help="Frame index from 0 (default 0).")
    view.add_argument("--window", help="Preset (lung, soft_tissue, brain, bone) or centre,width.")
    view.add_argument("--modality", help="Modality of a PNG/JPEG image.")

    analyze = commands.add_parser("analyze", help="Detect, verify, measure and draw the findings of a study.")
    analyze.add_argument("paths", nargs="+", metavar="STUDY")
    analyze.add_argument("--out", required=True, type=Path, help="Folder for overlay.png and findings.json.")
    analyze.add_argument("--backend", choices=["offline", "gemini"], default="offline",
                         help="gemini: the vision model proposes locations too (verified against the pixels).")
    analyze.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                         help="You checked the image: no identifying text on it, so Gemini may see its pixels.")
    analyze.add_argument("--json", action="store_true", help="Print the findings as JSON.")
    analyze.add_argument("--modality", help="Modality of a PNG/JPEG image.")

    verify = commands.add_parser("verify", help="Verify a proposed box (Gemini's box_2d convention).")
    verify.add_argument("paths", nargs="+", metavar="STUDY")
    verify.add_argument("--box-2d", required=True, dest="box_2d", help="YMIN,XMIN,YMAX,XMAX in 0–1000.")
    verify.add_argument("--frame", type=int, default=0)
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--modality", help="Modality of a PNG/JPEG image.")

    evaluate = commands.add_parser("eval", help="Score localisation on a manifest of lesion boxes.")
    evaluate.add_argument("manifest", type=Path, metavar="MANIFEST.csv")
    evaluate.add_argument("--backend", choices=["offline", "gemini"], default="offline")
    evaluate.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="Also write the scores as JSON.")
    evaluate.add_argument("--simulate-proposals", type=float, metavar="SIGMA_PCT",
                          help="Verify simulated proposals shifted by this σ (%% of the diagonal).")
    evaluate.add_argument("--seed", type=int, help="Seed of the simulated proposals (default: a fixed seed).")
    evaluate.add_argument("--repeats", type=int, default=1, metavar="K",
                          help="Simulated proposals per image, from seeds SEED … SEED+K-1 (default 1).")

    backends = ["auto", "gemini", "offline"]
    ask = commands.add_parser("ask", help="Ask one question about a study (one conversation turn).")
    ask.add_argument("paths", nargs="+", metavar="STUDY")
    ask.add_argument("question", help="The question, in quotes.")
    ask.add_argument("--backend", choices=backends, default=None, help="Default: LOUPE_BACKEND, else auto.")
    ask.add_argument("--json", action="store_true", help="Print the answer, tool calls, findings and usage as JSON.")
    ask.add_argument("--images", type=Path, help="Save the images the tools render in this folder.")
    ask.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    ask.add_argument("--offline-fallback", action="store_true",
                     help="If Gemini is unavailable, answer with the offline planner instead.")
    ask.add_argument("--session", help="Continue this stored session (or create it with this id).")
    ask.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                     help="You checked the image: no identifying text on it, so Gemini may see its pixels.")

    chat = commands.add_parser("chat", help="Talk about a study in the terminal.")
    chat.add_argument("paths", nargs="+", metavar="STUDY")
    chat.add_argument("--backend", choices=backends, default=None)
    chat.add_argument("--images", type=Path, default=Path("loupe-images"), help="Folder for rendered images.")
    chat.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    chat.add_argument("--session", help="Continue this stored session (or create it with this id).")

    sessions = commands.add_parser("sessions", help="List, rename or delete your stored sessions.")
    sessions_commands = sessions.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = sessions_commands.add_parser("list", help="Your sessions, most recent first.")
    listing.add_argument("--json", action="store_true")
    rename = sessions_commands.add_parser("rename", help="Give a session a title.")
    rename.add_argument("session_id")
    rename.add_argument("title")
    remove = sessions_commands.add_parser("delete", help="Delete a session and everything stored for it.")
    remove.add_argument("session_id")

    report = commands.add_parser("report", help="Draft a report for a study, or export / sign one from a session.")
    report.add_argument("paths", nargs="*", metavar="STUDY", help="Study to analyse and report on (a new session).")
    report.add_argument("--session", help="A stored session: export (or continue) its report.")
    report.add_argument("--out", required=True, type=Path, help="Folder for the exported files.")
    report.add_argument("--format", default="md,pdf,sr,json", help="Comma-separated: md, pdf, sr, json (default all).")
    report.add_argument("--version", type=int, help="Report version to export (default the current one).")
    report.add_argument("--sign", metavar="NAME", help="Sign the current version as this physician, then export it.")
    report.add_argument("--backend", choices=backends, default=None)
    report.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    report.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                        help="You checked the image: no identifying text on it, so Gemini may see its pixels.")

    second_read = commands.add_parser("second-read", help="Walk a guided second read of a study (checklist, crops, concordance).")
    second_read.add_argument("paths", nargs="+", metavar="STUDY")
    second_read.add_argument("--responses", type=Path, metavar="FILE.json",
                             help='Scripted answers: a JSON list, one {"assessment", "note"} per step.')
    second_read.add_argument("--json", action="store_true", help="Print the result as JSON; its 'summary' key holds the concordance.")
    second_read.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    second_read.add_argument("--images", type=Path, default=Path("loupe-images"), help="Folder for the step crops.")

    deid = commands.add_parser("deid", help="Write a de-identified copy (PS3.15 basic profile) of a DICOM file or folder.")
    deid.add_argument("source", type=Path, metavar="IN")
    deid.add_argument("target", type=Path, metavar="OUT")
    deid.add_argument("--map", type=Path, dest="map_path",
                      help="Local pseudonym map (default: loupe-pseudonym-map.json beside OUT). Never share it.")
    deid.add_argument("--json", action="store_true", help="Print the report as JSON.")

    audit = commands.add_parser("audit", help="Export the audit trail as JSON lines.")
    audit.add_argument("out", type=Path, metavar="OUT.jsonl", help="File to write ('-' for standard output).")
    audit.add_argument("--session", help="Only this session's entries.")

    serve = commands.add_parser("serve", help="Start the app on 127.0.0.1.")
    serve.add_argument("--port", type=int, help="Port (default from LOUPE_PORT, else 8501).")
    return parser


def study_summary(study: Study) -> dict[str, Any]:
    """The JSON summary of ``loupe info``: safe metadata only, never PHI."""
    safe = study.safe
    rendered = study.render(0)
    return {
        "study_id": study.id,
        "kind": safe.kind,
        "modality": safe.modality,
        "body_part": safe.body_part,
        "rows": safe.rows,
        "columns": safe.columns,
        "frames": safe.frames,
        "photometric": safe.photometric,
        "samples_per_pixel": safe.samples_per_pixel,
        "bits_stored": safe.bits_stored,
        "pixel_spacing_mm": list(safe.pixel_spacing_mm) if safe.pixel_spacing_mm else None,
        "spacing_source": safe.spacing_source,
        "slice_thickness_mm": safe.slice_thickness_mm,
        "spacing_between_slices_mm": safe.spacing_between_slices_mm,
        "window": {"center": safe.window.center, "width": safe.window.width} if safe.window else None,
        "display_window": (
            {"center": rendered.window.center, "width": rendered.window.width, "source": rendered.window.name}
            if rendered.window else None
        ),
        "window_presets": sorted(study.window_presets()),
        "physical_unit": safe.physical_unit,
        "transfer_syntax": safe.transfer_syntax,
        "sop_class": safe.sop_class,
        "image_format": safe.image_format,
        "burned_in_annotation": safe.burned_in_annotation,
    }


def _print_text(summary: dict[str, Any]) -> None:
    spacing = summary["pixel_spacing_mm"]
    lines = [
        f"modality      {summary['modality'] or 'unknown'}" + (f" ({summary['body_part']})" if summary["body_part"] else ""),
        f"size          {summary['columns']} x {summary['rows']} px, {summary['frames']} frame(s)",
        f"photometric   {summary['photometric']}",
        "spacing       " + (f"{spacing[0]:.4g} x {spacing[1]:.4g} mm (row x column, {summary['spacing_source']})"
                            if spacing else "unknown (measurements in px)"),
    ]
    if summary["window"]:
        lines.append(f"window        {summary['window']['center']:g} / {summary['window']['width']:g} (header)")
    if summary["window_presets"]:
        lines.append(f"presets       {', '.join(summary['window_presets'])}")
    if summary["transfer_syntax"]:
        lines.append(f"encoding      {summary['transfer_syntax']}")
    print("\n".join(lines))


def _source(paths: Sequence[str]) -> str | list[str]:
    return paths[0] if len(paths) == 1 else list(paths)


def _info(args: argparse.Namespace, settings: LoupeSettings) -> None:
    with open_study(_source(args.paths), limits=settings.study_limits(), modality=args.modality) as study:
        summary = study_summary(study)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(summary)


def _view(args: argparse.Namespace, settings: LoupeSettings) -> None:
    if args.out.suffix.lower() != ".png":
        _fail(f"the output file must end in .png (got '{args.out.name}')")
    from tools.render.png import encode_png

    with open_study(_source(args.paths), limits=settings.study_limits(), modality=args.modality) as study:
        data = encode_png(study.display(study.check_frame(args.frame), args.window))
    try:
        write_atomically(args.out, data)  # never leave a half-written PNG behind
    except OSError as error:
        _fail(f"cannot write '{args.out}': {error.strerror or error}")


def _analyze(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.analysis import analyze

    result = analyze(_source(args.paths), args.out, settings=settings, backend=args.backend, modality=args.modality,
                     confirm_images=args.confirm_images)
    if args.json:
        print(json.dumps(result.model_dump(), indent=2))
        return
    print(result.summary)
    for finding in result.findings:
        size = finding["size_mm"]
        size_text = f"{size[0]:.1f} x {size[1]:.1f} mm" if size else "size in px only"
        x, y = finding["center_px"]
        print(f"  {finding['id']}  {finding['label']}  at ({x:.0f}, {y:.0f}) px, frame {finding['frame']}, "
              f"{size_text}, confidence {finding['confidence']:.2f}, {finding['verification']['status']}")
    print(f"wrote {', '.join(result.files)} to {args.out}")


def _parse_box_2d(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        _fail(f"--box-2d needs four numbers YMIN,XMIN,YMAX,XMAX (got '{text}')")
    if len(values) != 4:
        _fail(f"--box-2d needs four numbers YMIN,XMIN,YMAX,XMAX (got {len(values)})")
    return values


def _verify(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.toolbox import new_context, run_tool

    box_2d = _parse_box_2d(args.box_2d)
    ctx = new_context(settings)
    try:
        run_tool(ctx, "load_study", {"path": _source(args.paths), "modality": args.modality})
        output = run_tool(ctx, "verify_coordinates", {"box_2d": box_2d, "frame": args.frame}).output
    finally:
        ctx.close()
    if args.json:
        print(json.dumps(output.model_dump(), indent=2))
        return
    x, y = output.center_px
    print(f"{output.status}: centre ({x:.1f}, {y:.1f}) px, box {[round(v, 1) for v in output.bbox_px]}")
    for reason in output.reasons:
        print(f"  - {reason}")


def _eval(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.evaluation.benchmark import run_eval

    if args.backend == "gemini":
        _fail("the Gemini backend is not available in this version; use --backend offline")
    if args.repeats < 1:
        _fail("--repeats must be at least 1")
    seed = {} if args.seed is None else {"seed": args.seed}
    report = run_eval(args.manifest, limits=settings.study_limits(), simulate_sigma_pct=args.simulate_proposals,
                      repeats=args.repeats, **seed)
    print(report.text)
    if args.json_out:
        args.json_out.write_text(json.dumps(report.data, indent=2))


def _study_path(paths: Sequence[str]) -> Path:
    if len(paths) != 1:
        _fail("give one study: a file, a folder or a .zip")
    return Path(paths[0])


def _backend_choice(name: str | None) -> str | None:
    return None if name in (None, "auto") else name


def _ask(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.chat import ask

    code = ask(settings, _study_path(args.paths), args.question, backend_name=_backend_choice(args.backend),
               as_json=args.json, modality=args.modality, image_dir=args.images,
               offline_fallback=args.offline_fallback, confirm_images=args.confirm_images,
               session_id=args.session)
    raise SystemExit(code)


def _chat(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.chat import chat

    raise SystemExit(chat(settings, _study_path(args.paths), backend_name=_backend_choice(args.backend),
                          modality=args.modality, image_dir=args.images, session_id=args.session))


def _sessions(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.store.database import Store

    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    if args.action == "rename":
        store.rename(args.session_id, settings.user, args.title)
    elif args.action == "delete":
        store.delete(args.session_id, settings.user)
        store.audit(settings.user, "session_deleted", {}, session_id=args.session_id)
    else:
        rows = store.list_sessions(settings.user)
        if args.json:
            print(json.dumps([{"id": r.id, "title": r.title, "created_at": r.created_at.isoformat(),
                               "updated_at": r.updated_at.isoformat(), "turns": r.turns} for r in rows], indent=2))
        for row in [] if args.json else rows:
            print(f"{row.id}  {row.updated_at:%Y-%m-%d %H:%M}  {row.turns:3d} turn(s)  {row.title}")


def _report(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.report import parse_formats, run_report

    study = _study_path(args.paths) if args.paths else None
    raise SystemExit(run_report(settings, study=study, session_id=args.session, out_dir=args.out,
                                formats=parse_formats(args.format), version=args.version, signer=args.sign,
                                backend_name=_backend_choice(args.backend), modality=args.modality,
                                confirm_images=args.confirm_images))


def _second_read(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.second_read import load_responses, run_second_read

    responses = None if args.responses is None else load_responses(args.responses)
    raise SystemExit(run_second_read(settings, _study_path(args.paths), responses, args.json, args.modality,
                                     image_dir=args.images))


def _deid(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.privacy.deid import default_pseudonym_map, deidentify
    from agent.store.database import Store

    report = deidentify(args.source, args.target, pseudonym_map=args.map_path or default_pseudonym_map(args.target))
    Store.for_data_dir(settings.data_dir, settings.db_url).audit(
        settings.user, "deid_export", {"written": report.written_count, "skipped": report.skipped_count,
                                       "burned_in_risk": len(report.burned_in_risk)})
    if args.json:
        print(report.model_dump_json(indent=2))
        return
    for note in report.notes():
        print(note)
    for skipped in report.files_skipped:
        print(f"  skipped {skipped.path.name}: {skipped.reason}")
    print(f"pseudonym map: {report.pseudonym_map} (keep it local; it links pseudonyms to patients)")


def _audit(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.store.audit import export_jsonl
    from agent.store.database import Store

    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    text = export_jsonl(store, session_id=args.session)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        write_atomically(args.out, text.encode())


def _serve(args: argparse.Namespace, settings: LoupeSettings) -> None:
    if settings.listens_beyond_loopback and settings.auth == "none":
        # Sessions hold clinical work: beyond this machine, every user must be identified.
        _fail(f"LOUPE_HOST={settings.host} makes Loupe reachable from other machines; set LOUPE_AUTH=oidc "
              "(Streamlit login) or LOUPE_AUTH=proxy-header (behind an authenticating reverse proxy) first")
    app = Path(__file__).resolve().parents[2] / "ui" / "app.py"
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", settings.host,
        "--server.port", str(args.port or settings.port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no "Deploy" button in a clinical tool
    ]
    # Become the Streamlit process (rather than wait on a child): stopping `loupe serve` then
    # stops the app too, and no server is left behind.
    os.execv(sys.executable, command)


def _join_negative_window(argv: list[str]) -> list[str]:
    """Let ``--window -600,1500`` work: argparse would read '-600,1500' as an option."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        if argv[index] == "--window" and index + 1 < len(argv) and argv[index + 1].startswith("-"):
            joined.append(f"--window={argv[index + 1]}")
            index += 2
            continue
        joined.append(argv[index])
        index += 1
    return joined


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _join_negative_window(list(sys.argv[1:] if argv is None else argv))
    args = _build_parser().parse_args(arguments)
    handlers = {"info": _info, "view": _view, "analyze": _analyze, "verify": _verify, "eval": _eval,
                "ask": _ask, "chat": _chat, "sessions": _sessions, "report": _report, "second-read": _second_read, "deid": _deid, "audit": _audit, "serve": _serve}
    try:
        handlers[args.command](args, LoupeSettings())
    except LoupeError as error:
        _fail(error.message)
    except BrokenPipeError:
        # The reader went away (e.g. `loupe analyze ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as error:  # the contract: one line, no traceback, even for our own bugs
        if os.environ.get("LOUPE_DEBUG"):
            raise
        _fail(f"unexpected internal error ({type(error).__name__}: {error}); set LOUPE_DEBUG=1 for details")

