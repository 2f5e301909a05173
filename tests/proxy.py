"""A real reverse proxy in front of the app: Debian's nginx, started by the tests as a plain
process (never the system service) with its own configuration in a temporary folder.

One ``server`` per test user, each on its own loopback port, sets the user header
(``X-Forwarded-User`` unless told otherwise) to that user — overwriting whatever the browser
sends, as an authenticating proxy does — and one more port forwards without the header, to
check that the app refuses a request nobody signed in. WebSockets are passed on (Streamlit
needs them).

    with NginxProxy(app_port, ["alice", "bob"]) as proxy:
        proxy.url_for("alice")   # http://127.0.0.1:PORT, every request arrives as alice
        proxy.url_for(None)      # the port that clears the header
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.browser import free_port

NGINX = Path("/usr/sbin/nginx")
TEMP_DIRS = ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp")
_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,100}$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,100}$")


def nginx_installed() -> bool:
    return NGINX.exists() and os.access(NGINX, os.X_OK)


def require_nginx() -> None:
    """Skip the calling test (fail it on CI) when nginx is not installed."""
    import pytest

    if nginx_installed():
        return
    message = f"nginx is not installed at {NGINX} (apt-get install nginx)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class NginxProxy:
    """nginx in front of ``upstream_port`` (on 127.0.0.1): a port per user setting
    ``header: user``, and a port (``url_for(None)``) that forwards with the header cleared."""

    def __init__(self, upstream_port: int, users: list[str], header: str = "X-Forwarded-User",
                 health_path: str = "/_stcore/health", start_timeout_s: float = 30):
        for user in users:
            if not _NAME.match(user):
                raise ValueError(f"unsupported test user name {user!r}")
        if not _HEADER.match(header):
            raise ValueError(f"unsupported header name {header!r}")
        self.upstream_port = upstream_port
        self.users = list(users)
        self.header = header
        self.health_path = health_path
        self.start_timeout_s = start_timeout_s
        self.ports: dict[str | None, int] = {}
        self.prefix: Path | None = None
        self.process: subprocess.Popen | None = None
        #: The error log's text, kept when the proxy stops (its folder is removed then).
        self.error_log_text = ""

    # -- the configuration ----------------------------------------------------------------------

    def config(self) -> str:
        """nginx.conf: everything nginx writes stays in ``prefix``."""
        assert self.prefix is not None
        prefix = self.prefix
        temp_paths = "\n".join(f"    {name}_path {prefix / name};" for name in TEMP_DIRS)
        servers = "\n".join(self._server(port, user) for user, port in self.ports.items())
        return f"""\
# Written by tests/proxy.py: a test proxy, not a deployment.
{self._user_directive()}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;

events {{
    worker_connections 256;
}}

http {{
    access_log {prefix / "access.log"};
{temp_paths}
    client_max_body_size 200m;  # Streamlit's own upload limit
    # Small buffers: a page's scripts go through proxy_temp and an upload through client_body_temp,
    # so a temp folder the workers cannot write shows up as an error, not later in production.
    client_body_buffer_size 16k;
    proxy_buffer_size 8k;
    proxy_buffers 4 8k;

{servers}
}}
"""

    def _server(self, port: int, user: str | None) -> str:
        value = f'"{user}"' if user is not None else '""'  # "" : nginx drops the header
        return f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{self.upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 86400;
            proxy_set_header {self.header} {value};
        }}
    }}
"""

    @staticmethod
    def _worker_account() -> tuple[str, str, int, int] | None:
        """As root, nginx's workers run as ``nobody``: (user, group, uid, gid) to name in the
        configuration and to own the temp folders; None when not root (workers stay as we are)."""
        if os.geteuid() != 0:
            return None
        try:
            account = pwd.getpwnam("nobody")
            group = grp.getgrgid(account.pw_gid).gr_name
        except KeyError:
            return None
        return account.pw_name, group, account.pw_uid, account.pw_gid

    def _user_directive(self) -> str:
        account = self._worker_account()
        if account is None:
            return "user root root;" if os.geteuid() == 0 else "# workers run as the test user"
        return f"user {account[0]} {account[1]};"

    # -- start and stop -------------------------------------------------------------------------

    def __enter__(self) -> NginxProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def url_for(self, user: str | None) -> str:
        return f"http://127.0.0.1:{self.ports[user]}"

    def start(self) -> None:
        # Not under pytest's tmp_path: its folders are private to us (0700), and as root the
        # workers (nobody) must reach their temp folders inside.
        self.prefix = Path(tempfile.mkdtemp(prefix="loupe-nginx-"))
        self.prefix.chmod(0o711)
        account = self._worker_account()
        for name in TEMP_DIRS:
            folder = self.prefix / name
            folder.mkdir(mode=0o700)
            if account is not None:
                os.chown(folder, account[2], account[3])
        for attempt in range(3):  # a free port can be taken between choosing it and binding it
            self.ports = {user: free_port() for user in [*self.users, None]}
            conf = self.prefix / "nginx.conf"
            conf.write_text(self.config())
            self.process = subprocess.Popen(
                [str(NGINX), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf),
                 "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            try:
                self._wait_ready()
                return
            except RuntimeError:
                self._terminate()
                if attempt == 2 or "Address already in use" not in self.error_log_text:
                    self._cleanup()
                    raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        waiting = set(self.ports)
        while waiting:
            if self.process.poll() is not None:
                self.error_log_text = self.read_error_log() + self.process.stderr.read().decode(errors="replace")
                raise RuntimeError(f"nginx exited ({self.process.returncode}): {self.error_log_text[-2000:]}")
            if time.monotonic() > deadline:
                self.error_log_text = self.read_error_log()
                raise RuntimeError(f"nginx did not answer on {sorted(map(str, waiting))}: {self.error_log_text[-2000:]}")
            for user in list(waiting):
                try:
                    with urllib.request.urlopen(f"{self.url_for(user)}{self.health_path}", timeout=2) as response:
                        if response.status == 200:
                            waiting.discard(user)
                except (urllib.error.URLError, OSError):
                    pass
            if waiting:
                time.sleep(0.1)

    def read_error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace") if self.prefix else ""
        except OSError:
            return ""

    def serious_errors(self) -> list[str]:
        """Error-log lines at [crit] or worse (e.g. a temp folder the workers cannot write)."""
        text = self.read_error_log() or self.error_log_text
        return [line for line in text.splitlines() if re.search(r"\[(crit|alert|emerg)\]", line)]

    def _terminate(self) -> None:
        """Stop nginx by the PID it was started with: SIGTERM (fast shutdown: open WebSockets
        would hold a graceful one for proxy_read_timeout), then SIGKILL to its process group."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: the master and its workers
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        self.error_log_text = self.read_error_log() or self.error_log_text

    def _cleanup(self) -> None:
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def stop(self) -> None:
        self._terminate()
        self._cleanup()
