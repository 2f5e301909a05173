"""``loupe verify STUDY --box-2d YMIN,XMIN,YMAX,XMAX [--json]``: the verdict on a proposed box
(Gemini's ``box_2d`` convention, 0–1000)."""

from __future__ import annotations

import argparse
import json

from agent.cli.parsing import fail, note_assumed_modality, source_of
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    verify = commands.add_parser("verify", help="Verify a proposed box (Gemini's box_2d convention).")
    verify.add_argument("paths", nargs="+", metavar="STUDY")
    verify.add_argument("--box-2d", required=True, dest="box_2d", help="YMIN,XMIN,YMAX,XMAX in 0–1000.")
    verify.add_argument("--frame", type=int, default=0)
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    verify.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.toolbox import new_context, run_tool

    box_2d = _parse_box_2d(args.box_2d)
    ctx = new_context(settings)
    try:
        loaded = run_tool(ctx, "load_study", {"path": source_of(args.paths, settings), "modality": args.modality}).output
        note_assumed_modality(loaded.summary.modality_assumed())
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


def _parse_box_2d(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        fail(f"--box-2d needs four numbers YMIN,XMIN,YMAX,XMAX (got '{text}')")
    if len(values) != 4:
        fail(f"--box-2d needs four numbers YMIN,XMIN,YMAX,XMAX (got {len(values)})")
    return values
