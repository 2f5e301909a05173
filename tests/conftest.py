"""Shared fixtures: pydicom's offline test files and the shared evaluation data."""

from __future__ import annotations

import csv
import ipaddress
import os
import socket
import warnings
from collections.abc import Collection
from pathlib import Path

import pydicom.data
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", REPO.parent / "shared"))
EVAL_DIR = SHARED / "data" / "eval"

# pydicom warns about the deliberately odd test files; the tests assert on outcomes instead.
warnings.filterwarnings("ignore", module="pydicom")


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test data or pydicom-data, never downloaded."""
    found = pydicom.data.get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(found)


@pytest.fixture
def eval_dir() -> Path:
    if not (EVAL_DIR / "manifest.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the shared evaluation data is missing at {EVAL_DIR}")
        pytest.skip(f"shared evaluation data not found at {EVAL_DIR}")
    return EVAL_DIR


@pytest.fixture
def isolated_cli(monkeypatch, tmp_path):
    """No developer re-raise, and no stray ``.env`` from the caller's working directory."""
    monkeypatch.delenv("LOUPE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def small_manifest(eval_dir: Path, tmp_path: Path, picked: Collection[str]) -> Path:
    """A manifest of the dev set's rows for the ``picked`` image paths, pointing at the images in
    place (never copied)."""
    with (eval_dir / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [dict(row, image_path=str(eval_dir / row["image_path"])) for row in reader
                if row["image_path"] in picked]
        fields = reader.fieldnames
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``loupe ARGS`` in-process; return (exit code, stdout, stderr)."""
    from agent.cli.main import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


_MODEL_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "LOUPE_GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL",
              "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "LOUPE_BACKEND",
              "LOUPE_DICOMWEB_URL", "LOUPE_DICOMWEB_USER", "LOUPE_DICOMWEB_PASSWORD", "LOUPE_DICOMWEB_TOKEN",
              "OPENAI_API_KEY", "OPENAI_BASE_URL", "LOUPE_OPENAI_BASE_URL", "LOUPE_OPENAI_API_KEY", "LOUPE_OPENAI_MODEL",
              "LOUPE_OPENAI_TOOLS", "LOUPE_OPENAI_BOX_FORMAT", "LOUPE_OPENAI_STRUCTURED_OUTPUT", "LOUPE_MODEL_SITE")


def _loopback_only(address: object) -> None:
    host = address[0] if isinstance(address, tuple) else None
    if host is None:  # AF_UNIX and friends stay on this machine
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise RuntimeError(f"a test tried to reach {address!r}; tests must stay on 127.0.0.1 (no real Gemini)")


@pytest.fixture(autouse=True)
def no_network_no_keys(monkeypatch, tmp_path_factory):
    """Every test: no model credentials from the environment, no socket leaves loopback (so
    nothing in the suite can reach the real Gemini API), and sessions go to a fresh data folder."""
    for name in _MODEL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOUPE_DATA_DIR", str(tmp_path_factory.mktemp("loupe-data")))
    monkeypatch.delenv("LOUPE_DB_URL", raising=False)
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock, address):
        _loopback_only(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        _loopback_only(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def fake(monkeypatch):
    """A fake Gemini server on 127.0.0.1 that the real SDK reaches through its own
    GOOGLE_GEMINI_BASE_URL (the way a proxy or a test server is reached in production)."""
    from tests.fake_gemini import FakeGemini

    with FakeGemini() as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        yield server


@pytest.fixture
def openai_fake():
    """A fake OpenAI-compatible server (vLLM, Ollama, ...) on 127.0.0.1 that the real ``openai``
    SDK reaches through LOUPE_OPENAI_BASE_URL, as it would reach a hospital's own server."""
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def orthanc():
    """A real Orthanc with its DICOMweb plugin (installed by .ci/run), seeded over STOW-RS with
    LIDC-IDRI-0002's CT slices, pydicom's CT_small and MR_small, and a study holding only an SR."""
    from tests.orthanc import OrthancServer, orthanc_installed

    if not orthanc_installed():
        if os.environ.get("CI"):
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    with OrthancServer() as server:
        server.seed(sorted((EVAL_DIR / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm"))
                    + [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm"), pydicom_file("test-SR.dcm")])
        yield server


@pytest.fixture
def pacs_env(orthanc, monkeypatch):
    """Loupe's settings pointed at the test Orthanc."""
    for name, value in orthanc.env().items():
        monkeypatch.setenv(name, value)
    return orthanc


def preread_settings(monkeypatch, data_dir: Path) -> None:
    """Pre-read jobs run in this process (no broker), in ``data_dir``, without PACS back-off waits."""
    monkeypatch.setenv("LOUPE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LOUPE_DICOMWEB_RETRY_INITIAL_S", "0")
    monkeypatch.delenv("LOUPE_BROKER_URL", raising=False)


@pytest.fixture
def own_pacs(monkeypatch, tmp_path):
    """An Orthanc of the test's own (studies arrive in it while the test runs), with pre-read jobs
    run in this process (``preread_settings``)."""
    from tests.orthanc import OrthancServer, orthanc_installed

    if not orthanc_installed():
        if os.environ.get("CI"):
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed")
    with OrthancServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        preread_settings(monkeypatch, tmp_path / "data")
        yield server


@pytest.fixture
def preread_env(pacs_env, monkeypatch, tmp_path):
    """The test Orthanc, with pre-read jobs run here (``preread_settings``)."""
    preread_settings(monkeypatch, tmp_path / "data")
    return pacs_env


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL (installed by .ci/run), one throwaway cluster for the test run."""
    from tests.postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def redis():
    """A real Redis (installed by .ci/run) as the Celery broker, a fresh one per test; its
    ``url`` is what LOUPE_BROKER_URL takes and ``restart(empty=True)`` loses every queue."""
    from tests.redis_service import RedisServer, redis_installed

    if not redis_installed():
        if os.environ.get("CI"):
            pytest.fail("Redis is not installed (apt-get install redis-server)")
        pytest.skip("Redis is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    """The session database of a store test: the default SQLite file (None), or a new empty
    database on the test PostgreSQL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(tmp_path, db_url):
    """A store on SQLite and, again, on PostgreSQL (every test using it runs on both)."""
    from agent.store.database import Store

    opened = Store.for_data_dir(tmp_path / "data", db_url)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def browser_available() -> None:
    """Debian's Chromium and Playwright (which drives it; its own browser is never downloaded)."""
    from tests.browser import CHROMIUM

    try:
        import playwright  # noqa: F401
    except ImportError:
        playwright = None
    if CHROMIUM.exists() and playwright is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must provide Chromium (apt) and Playwright (pip) for the browser suite")
    pytest.skip("no Chromium or Playwright on this machine")
