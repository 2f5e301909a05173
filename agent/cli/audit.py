"""``loupe audit OUT.jsonl [--session ID]``: your audit trail as JSON lines ('-' = stdout).

Only the entries of the user running it (``LOUPE_USER``): on a shared database one clinician
does not read another's trail. A department's full trail is read from the database itself, by
whoever administers it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.settings import LoupeSettings
from agent.store.files import write_atomically


def add_parser(commands) -> None:
    audit = commands.add_parser("audit", help="Export your audit trail as JSON lines.")
    audit.add_argument("out", type=Path, metavar="OUT.jsonl", help="File to write ('-' for standard output).")
    audit.add_argument("--session", help="Only this session's entries.")
    audit.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.store.audit import export_jsonl
    from agent.store.database import SessionNotFoundError, Store

    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    text = export_jsonl(store, session_id=args.session, actor=settings.user)
    if args.session and not text:
        raise SessionNotFoundError(f"There is no audit trail of a session '{args.session}' for you.")
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        write_atomically(args.out, text.encode())
