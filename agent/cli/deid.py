"""``loupe deid IN OUT [--map FILE] [--json]``: a PS3.15 basic-profile de-identified copy."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    deid = commands.add_parser("deid", help="Write a de-identified copy (PS3.15 basic profile) of a DICOM file or folder.")
    deid.add_argument("source", type=Path, metavar="IN")
    deid.add_argument("target", type=Path, metavar="OUT")
    deid.add_argument("--map", type=Path, dest="map_path",
                      help="Local pseudonym map (default: loupe-pseudonym-map.json beside OUT). Never share it.")
    deid.add_argument("--json", action="store_true", help="Print the report as JSON.")
    deid.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
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
