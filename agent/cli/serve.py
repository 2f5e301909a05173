"""``loupe serve [--port N]``: the app, bound to 127.0.0.1 unless authentication is configured."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.cli.parsing import fail
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="Start the app on 127.0.0.1.")
    serve.add_argument("--port", type=int, help="Port (default from LOUPE_PORT, else 8501).")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    if settings.listens_beyond_loopback and settings.auth == "none":
        # Sessions hold clinical work: beyond this machine, every user must be identified.
        fail(f"LOUPE_HOST={settings.host} makes Loupe reachable from other machines; set LOUPE_AUTH=oidc "
             "(Streamlit login) or LOUPE_AUTH=proxy-header (behind an authenticating reverse proxy) first")
    app = Path(__file__).resolve().parents[2] / "ui" / "app.py"
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", settings.host,
        "--server.port", str(args.port or settings.port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no "Deploy" button in a clinical tool
    ]
    # Become the Streamlit process (rather than wait on a child): stopping `loupe serve` then
    # stops the app too, and no server is left behind.
    os.execv(sys.executable, command)
