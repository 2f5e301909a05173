"""``loupe worker`` as a process of its own process group (its Celery pool processes included),
for the tests and bench/bench_preread.py: started, waited for, SIGKILLed whole, stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class WorkerProcess:
    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "agent.cli", "worker", *args], cwd=REPO,
                                        env=dict(os.environ) if env is None else env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid
        self.killed = False

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 40.0) -> WorkerProcess:
        """Until Celery says it is ready; ``RuntimeError`` with the log's end when it exits or
        takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"loupe worker exited at start:\n{self.text()[-3000:]}")
            if " ready." in self.text():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"loupe worker was not ready within {timeout_s:.0f} s:\n{self.text()[-3000:]}")

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` (a job's, say) belongs to this worker."""
        try:
            return os.getpgid(pid) == self.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole worker: its main process and every pool process at once."""
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.killed = True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown: a running job finishes first
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self._log.close()
