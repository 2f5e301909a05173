"""``loupe second-read STUDY [--responses FILE.json] [--json]``: a guided second read in the
terminal (``agent.cli.guided_read`` walks it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.parsing import study_path
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    second_read = commands.add_parser("second-read",
                                      help="Walk a guided second read of a study (checklist, crops, concordance).")
    second_read.add_argument("paths", nargs="+", metavar="STUDY")
    second_read.add_argument("--responses", type=Path, metavar="FILE.json",
                             help='Scripted answers: a JSON list, one {"assessment", "note"} per step.')
    second_read.add_argument("--json", action="store_true",
                             help="Print the result as JSON; its 'summary' key holds the concordance.")
    second_read.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    second_read.add_argument("--images", type=Path, default=Path("loupe-images"), help="Folder for the step crops.")
    second_read.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.cli.guided_read import load_responses, run_second_read

    responses = None if args.responses is None else load_responses(args.responses)
    raise SystemExit(run_second_read(settings, study_path(args.paths, settings), responses, args.json, args.modality,
                                     image_dir=args.images))
