"""``loupe pacs search [--patient-id ID] [--patient-name NAME] [--accession A] [--modality M]
[--date YYYYMMDD[-YYYYMMDD]] [--description TEXT] [--json]``, ``loupe pacs series STUDY_UID
[--json]`` and ``loupe pacs priors STUDY_UID [--json]``: studies, series and a study's priors on
the PACS at ``LOUPE_DICOMWEB_URL``.

``priors --json`` prints a list of objects with at least ``study_uid, study_date, modalities,
description, interval_days`` (and ``same_modality``, ``same_body_part``), the same modality and
body part first (``agent.pacs.priors``).

``search --json`` prints a list of objects with at least ``study_uid, study_date, modalities,
description, series, instances`` (a contract checks rely on), and the patient's name and id for
the clinician who asked. Any study found opens in every command as ``pacs:STUDY_UID``.
"""

from __future__ import annotations

import argparse
import json

from agent.cli.parsing import Parser
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    pacs = commands.add_parser("pacs", help="Search the PACS (LOUPE_DICOMWEB_URL) for studies and series.")
    actions = pacs.add_subparsers(dest="action", required=True, parser_class=Parser)
    search = actions.add_parser("search", help="Studies matching all the given keys, newest first.")
    search.add_argument("--patient-id")
    search.add_argument("--patient-name", help="Name, with * and ? wildcards: 'DOE*', 'Doe, John'.")
    search.add_argument("--accession")
    search.add_argument("--modality", help="A modality in the study: CT, MR, DX, US, ...")
    search.add_argument("--date", help="Study date YYYYMMDD, or a range YYYYMMDD-YYYYMMDD.")
    search.add_argument("--description", help="Study description, with * and ? wildcards.")
    search.add_argument("--json", action="store_true")
    series = actions.add_parser("series", help="The series of one study.")
    series.add_argument("study_uid")
    series.add_argument("--json", action="store_true")
    priors = actions.add_parser("priors", help="The same patient's earlier studies: the priors to compare with.")
    priors.add_argument("study_uid")
    priors.add_argument("--json", action="store_true")
    pacs.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.pacs.client import PacsConnection
    from agent.pacs.search import StudyQuery, search_studies, series_of, study

    connection = PacsConnection(settings)
    if args.action == "priors":
        _priors(connection, args.study_uid.removeprefix("pacs:"), args.json)
        return
    if args.action == "series":
        study(connection, args.study_uid)  # "no such study" rather than an empty list
        found = series_of(connection, args.study_uid)
        if args.json:
            print(json.dumps([s.as_json() for s in found], indent=2))
            return
        for item in found:
            print(f"pacs:{item.study_uid}/{item.series_uid}  {item.label()}")
        return
    query = StudyQuery(patient_id=args.patient_id, patient_name=args.patient_name, accession=args.accession,
                       modality=args.modality, date=args.date, description=args.description)
    matches = search_studies(connection, query)
    if args.json:
        print(json.dumps([m.as_json() for m in matches], indent=2, ensure_ascii=False))
        return
    if not matches:
        print("No study on the PACS matches.")
    for match in matches:
        print(f"pacs:{match.study_uid}  {match.study_date or '--------'}  {'/'.join(match.modalities) or '?':6}  "
              f"{match.series} series, {match.instances} images  {match.description or '(no description)'}  "
              f"· {match.patient_name or '?'} ({match.patient_id or 'no id'})")


def _priors(connection, study_uid: str, as_json: bool) -> None:
    from agent.pacs.priors import priors_of

    found = priors_of(connection, study_uid)
    if as_json:
        print(json.dumps([p.as_json() for p in found], indent=2, ensure_ascii=False))
        return
    if not found:
        print("No earlier study of this patient on the PACS.")
    for prior in found:
        match = prior.match
        same = "same modality and body part" if prior.same_modality and prior.same_body_part else (
            "same modality" if prior.same_modality else "another modality")
        print(f"pacs:{match.study_uid}  {match.study_date}  {prior.interval_days} days before  "
              f"{'/'.join(match.modalities) or '?':6}  {match.description or '(no description)'}  · {same}")
