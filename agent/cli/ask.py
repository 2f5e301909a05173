"""``loupe ask STUDY "question" [--backend auto|gemini|offline] [--json] [--images DIR]``: one
conversation turn; ``--json`` prints ``{"answer", "tool_calls": [{"name", "args", "ok",
"duration_ms"}], "findings", "usage", "backend", "images", "error"}``."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.parsing import BACKENDS, backend_choice, study_path
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    ask = commands.add_parser("ask", help="Ask one question about a study (one conversation turn).")
    ask.add_argument("paths", nargs="+", metavar="STUDY")
    ask.add_argument("question", help="The question, in quotes.")
    ask.add_argument("--backend", choices=BACKENDS, default=None, help="Default: LOUPE_BACKEND, else auto.")
    ask.add_argument("--json", action="store_true", help="Print the answer, tool calls, findings and usage as JSON.")
    ask.add_argument("--images", type=Path, help="Save the images the tools render in this folder.")
    ask.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    ask.add_argument("--offline-fallback", action="store_true",
                     help="If Gemini is unavailable, answer with the offline planner instead.")
    ask.add_argument("--session", help="Continue this stored session (or create it with this id).")
    ask.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                     help="You checked the image: no identifying text on it, so Gemini may see its pixels.")
    ask.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.terminal import ask

    code = ask(settings, study_path(args.paths, settings), args.question, backend_name=backend_choice(args.backend),
               as_json=args.json, modality=args.modality, image_dir=args.images,
               offline_fallback=args.offline_fallback, confirm_images=args.confirm_images,
               session_id=args.session)
    raise SystemExit(code)
