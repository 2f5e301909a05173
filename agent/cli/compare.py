"""``loupe compare CURRENT PRIOR [--out DIR] [--json]``: the current study analysed, the prior
registered to it, each finding carried there and measured; its status and change. Either study
may be ``pacs:STUDY_UID[/SERIES_UID]``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agent.cli.parsing import source_of, study_path
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    compare = commands.add_parser("compare", help="Compare a study with the patient's prior: what is new, grown, "
                                                  "shrunk, stable or resolved.")
    compare.add_argument("current", metavar="CURRENT", help="The current study: file, folder, .zip or pacs:UID.")
    compare.add_argument("prior", metavar="PRIOR", help="The prior study: file, folder, .zip or pacs:UID.")
    compare.add_argument("--out", type=Path, help="Folder for comparison.json and the figures (default: none kept).")
    compare.add_argument("--json", action="store_true", help="Print the comparison as JSON.")
    compare.add_argument("--modality", help="Modality of PNG/JPEG images.")
    compare.add_argument("--interval-days", type=int, dest="interval_days",
                         help="Days between the studies, when their files carry no date (PNG/JPEG).")
    compare.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.analysis import compare_studies

    current = source_of([args.current], settings)
    prior = str(study_path([args.prior], settings))
    with tempfile.TemporaryDirectory(prefix="loupe-compare-") as scratch:
        result = compare_studies(current, prior, args.out or Path(scratch), settings=settings, modality=args.modality,
                                 interval_days=args.interval_days)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(result["summary"])
    registration = result["registration"]
    transform = registration["transform"]
    print(f"registration: {registration['method']}; scale {transform['scale']:.3f}, rotation "
          f"{transform['rotation_deg']:.1f}°, shift {transform['shift_px'][0]:.1f}, {transform['shift_px'][1]:.1f} px; "
          f"residual {registration['residual']:.3f}")
    for item in result["findings"]:
        print(f"  {item['id']:4} {item['status']:9} prior {_size(item['prior'])}  now {_size(item['current'])}"
              f"{_change(item['change'])}")
    if result.get("message"):
        print(result["message"])
    if args.out:
        print(f"wrote {', '.join(result['files'])} to {args.out}")


def _size(where: dict | None) -> str:
    from tools.compare.record import LesionThere

    return "—" if where is None else LesionThere.model_validate(where).size_text()


def _change(change: dict | None) -> str:
    if not change:
        return ""
    doubling = change.get("doubling_time_days")
    return (f"  mean diameter {round(change['mean_diameter_pct']) + 0.0:+.0f} %"
            + (f", volume doubling time {doubling:.0f} days" if doubling else ""))
