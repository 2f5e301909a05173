"""A throwaway Redis (Debian's ``redis-server``) as the Celery broker of the pre-read tests: a
plain process on a random loopback port with a temporary folder, stopped by the process id it
was started with — never the system service the package may have started on 6379."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.browser import free_port

REDIS_SERVER = "redis-server"


def redis_installed() -> bool:
    return shutil.which(REDIS_SERVER) is not None


class RedisServer:
    """``with RedisServer() as broker:`` — ``broker.url`` (``redis://127.0.0.1:PORT/0``),
    ``broker.restart(empty=True)`` (the same port, nothing kept: a broker that lost its queues)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="loupe-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        self.log = (self.folder / "redis.log").open("ab")
        # --port 0 would mean "no TCP at all": always a real free port.
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
             "--appendonly", "yes", "--daemonize", "no", "--protected-mode", "yes"],
            cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {(self.folder / 'redis.log').read_text()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 20 s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def restart(self, *, empty: bool = True) -> None:
        """Stop it and start it again on the same port; ``empty`` drops its append-only file
        first, so it comes back with no queue, no message and no unacked delivery."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as a crashed broker goes: no final rewrite
            self.process.wait(timeout=10)
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if empty:
            shutil.rmtree(self.folder / "data", ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
