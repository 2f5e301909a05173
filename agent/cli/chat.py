"""``loupe chat STUDY [--backend ...] [--images DIR] [--session ID]``: a conversation in the
terminal, until end of input or ``/quit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.parsing import BACKENDS, backend_choice, study_path
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    chat = commands.add_parser("chat", help="Talk about a study in the terminal.")
    chat.add_argument("paths", nargs="+", metavar="STUDY")
    chat.add_argument("--backend", choices=BACKENDS, default=None)
    chat.add_argument("--images", type=Path, default=Path("loupe-images"), help="Folder for rendered images.")
    chat.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    chat.add_argument("--session", help="Continue this stored session (or create it with this id).")
    chat.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.terminal import chat

    raise SystemExit(chat(settings, study_path(args.paths, settings), backend_name=backend_choice(args.backend),
                          modality=args.modality, image_dir=args.images, session_id=args.session))
