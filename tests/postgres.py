"""A throwaway PostgreSQL (Debian's ``postgresql``) for the tests and the store benchmark: a
cluster made by ``initdb`` in a temporary folder, its server started as a plain process on a
random loopback port (as the unprivileged ``postgres`` user when the tests run as root, which
PostgreSQL refuses), and stopped by the process id it was started with."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.browser import free_port

DATABASE, ROLE = "loupe", "loupe"


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``with PostgresServer() as pg:`` — ``pg.url`` is a SQLAlchemy URL (psycopg 3) for a fresh
    database; ``pg.new_database()`` makes another one, for tests that need an empty store."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="loupe-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        # The server will not run as root: run it as Debian's postgres user then.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.databases = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> PostgresServer:
        data = self.folder / "data"
        data.mkdir()
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.folder, data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "--encoding=UTF8",
                   "--no-sync"])
        self.log = (self.folder / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_user())
        self._wait_ready()
        self._psql(f"CREATE DATABASE {DATABASE}")
        return self

    def new_database(self) -> str:
        """A URL of a new, empty database on this server."""
        self.databases += 1
        name = f"{DATABASE}_{self.databases}"
        self._psql(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{name}"

    def _as_user(self) -> dict:
        return {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, **self._as_user())
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {result.stderr[-2000:]}")

    def _psql(self, sql: str) -> None:
        self._run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", "postgres",
                   "-v", "ON_ERROR_STOP=1", "-c", sql])

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start: {(self.folder / 'postgres.log').read_text()[-2000:]}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True, timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # "fast" shutdown: a few hundred ms
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
