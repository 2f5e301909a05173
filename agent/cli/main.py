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
- ``loupe report STUDY --out DIR [--format md,pdf,sr,json] [--send]`` or ``loupe report --session ID --out DIR
  [--version N] [--sign NAME]`` — draft, sign and export reports.
- ``loupe second-read STUDY [--responses FILE.json] [--json]`` — a guided second read.
- ``loupe pacs search [--patient-id ID] [--patient-name NAME] [--accession A] [--modality M]
  [--date YYYYMMDD[-YYYYMMDD]] [--json]`` — studies on the PACS (``LOUPE_DICOMWEB_URL``); JSON
  objects with at least ``study_uid, study_date, modalities, description, series, instances``.
  Every command taking a study also takes ``pacs:STUDY_UID`` or ``pacs:STUDY_UID/SERIES_UID``.
- ``loupe compare CURRENT PRIOR [--out DIR] [--json] [--interval-days N]`` — the current study compared
  with a prior (either may be ``pacs:UID``); JSON with at least ``interval_days``, ``registration``
  (``method``, ``transform``, ``residual``) and ``findings`` (``id``, ``status``, ``current``, ``prior``,
  ``change``).
- ``loupe deid IN OUT [--map FILE] [--json]`` — a PS3.15 basic-profile de-identified copy.
- ``loupe audit OUT.jsonl [--session ID]`` — the audit trail as JSON lines.
- ``loupe serve [--port N]`` — the app on 127.0.0.1.
- ``loupe preread study pacs:STUDY_UID [--priority stat|routine] [--force]``, ``loupe preread run --date
  YYYYMMDD[-YYYYMMDD] [--modality M]``, ``loupe preread status [--json]`` — pre-read studies on the PACS
  (JSON rows with at least ``study_uid, state, priority, findings, anomaly_found, top_finding, queued_at,
  started_at, finished_at, error``).
- ``loupe worker [--queues stat,routine] [--concurrency N]`` — a Celery worker of pre-read jobs
  (``LOUPE_BROKER_URL``), with the sweeper that re-submits jobs a lost worker or broker left.

Each command is one module of this package (``add_parser`` and ``run``); this one only builds
the parser and dispatches. Any error: exit code 2 and one line ``error: <message>`` on stderr,
never a traceback (``LOUPE_DEBUG=1`` re-raises unexpected ones for developers).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent.cli import (analyze, ask, audit, chat, compare, deid, evaluate, info, pacs, preread, report, second_read, serve,
                       sessions, verify, view, worker)
from agent.cli.parsing import Parser, fail
from agent.settings import LoupeSettings
from tools.errors import LoupeError

#: In the order ``loupe --help`` lists them.
COMMANDS = (info, view, analyze, compare, verify, evaluate, ask, chat, sessions, report, second_read, pacs, preread, deid, audit,
            serve, worker)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="loupe", description="Loupe, a clinician's imaging assistant.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


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
    args = build_parser().parse_args(arguments)
    try:
        args.run(args, LoupeSettings())
    except LoupeError as error:
        fail(error.message)
    except BrokenPipeError:
        # The reader went away (e.g. `loupe analyze ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as error:  # the contract: one line, no traceback, even for our own bugs
        if os.environ.get("LOUPE_DEBUG"):
            raise
        fail(f"unexpected internal error ({type(error).__name__}: {error}); set LOUPE_DEBUG=1 for details")

