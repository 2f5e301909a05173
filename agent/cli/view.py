"""``loupe view PATH... --out FILE.png [--frame N] [--window PRESET | --window C,W]``: the
display image of a frame at native resolution."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.parsing import fail, source_of
from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from tools.study import open_study


def add_parser(commands) -> None:
    view = commands.add_parser("view", help="Write the display image of a frame as PNG.")
    view.add_argument("paths", nargs="+", metavar="PATH")
    view.add_argument("--out", required=True, type=Path, help="PNG file to write.")
    view.add_argument("--frame", type=int, default=0, help="Frame index from 0 (default 0).")
    view.add_argument("--window", help="Preset (lung, soft_tissue, brain, bone) or centre,width.")
    view.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    view.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    if args.out.suffix.lower() != ".png":
        fail(f"the output file must end in .png (got '{args.out.name}')")
    from tools.render.png import encode_png

    with open_study(source_of(args.paths, settings), limits=settings.study_limits(), modality=args.modality) as study:
        data = encode_png(study.display(study.check_frame(args.frame), args.window))
    try:
        write_atomically(args.out, data)  # never leave a half-written PNG behind
    except OSError as error:
        fail(f"cannot write '{args.out}': {error.strerror or error}")
