"""``loupe sessions list [--json] | rename ID TITLE | delete ID``: the user's stored sessions."""

from __future__ import annotations

import argparse
import json

from agent.cli.parsing import Parser
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    sessions = commands.add_parser("sessions", help="List, rename or delete your stored sessions.")
    sessions_commands = sessions.add_subparsers(dest="action", required=True, parser_class=Parser)
    listing = sessions_commands.add_parser("list", help="Your sessions, most recent first.")
    listing.add_argument("--json", action="store_true")
    rename = sessions_commands.add_parser("rename", help="Give a session a title.")
    rename.add_argument("session_id")
    rename.add_argument("title")
    remove = sessions_commands.add_parser("delete", help="Delete a session and everything stored for it.")
    remove.add_argument("session_id")
    sessions.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.store.database import Store

    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    if args.action == "rename":
        store.rename(args.session_id, settings.user, args.title)
    elif args.action == "delete":
        store.delete(args.session_id, settings.user)
        store.audit(settings.user, "session_deleted", {}, session_id=args.session_id)
    else:
        rows = store.list_sessions(settings.user)
        if args.json:
            print(json.dumps([{"id": r.id, "title": r.title, "created_at": r.created_at.isoformat(),
                               "updated_at": r.updated_at.isoformat(), "turns": r.turns} for r in rows], indent=2))
        for row in [] if args.json else rows:
            print(f"{row.id}  {row.updated_at:%Y-%m-%d %H:%M}  {row.turns:3d} turn(s)  {row.title}")
