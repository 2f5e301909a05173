"""Driving the real app in a real browser: `loupe serve` on a free loopback port, Debian's
Chromium through Playwright (never a downloaded browser). Shared by the e2e tests and
bench/bench_ui.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`loupe serve` on a free port with its own data folder; yields the base URL. No model key
    of the caller's reaches it; one in ``extra_env`` does (a fake Gemini's, say)."""
    port = free_port()
    env = {**os.environ, "LOUPE_DATA_DIR": str(data_dir), "LOUPE_USER": "dr-browser"}
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "LOUPE_GEMINI_API_KEY"):
        env.pop(key, None)
    env.update(extra_env or {})
    process = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the app did not become healthy in time")


@contextmanager
def chromium_page(viewport=(1280, 800), color_scheme: str = "light") -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                          accept_downloads=True, color_scheme=color_scheme)
            yield context.new_page()
        finally:
            browser.close()


def wait_idle(page, timeout_ms: int = 90_000) -> None:
    """Connected and no script run in progress (waiting for a text alone races a final rerun)."""
    page.wait_for_selector("[data-testid=stApp][data-test-connection-state=CONNECTED]", timeout=timeout_ms)
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=timeout_ms)


def _attach(page, chat, files: list[Path]) -> None:
    """Attach ``files`` to the chat input and wait until the input shows each of them: sent
    earlier, the message would go without them (and be answered about the study already open).
    Files set while the app reruns (it does once after loading) can be dropped: set them again."""
    for _ in range(3):
        chat.locator("input[type=file]").set_input_files([str(f) for f in files])
        try:
            for file in files:
                chat.get_by_text(file.name).first.wait_for(timeout=10_000)
        except Exception:  # Playwright's TimeoutError: not attached (yet)
            wait_idle(page)
            continue
        page.wait_for_load_state("networkidle")
        return
    raise AssertionError(f"the chat input did not take {[f.name for f in files]}")


def send_message(page, text: str, files: list[Path] | None = None) -> None:
    chat = page.locator("[data-testid=stChatInput]")
    if files:
        _attach(page, chat, files)
    box = chat.locator("textarea")
    box.fill(text)
    box.press("Enter")
    # An Enter pressed while the upload is still being registered is ignored (the text and the
    # files stay in the input): press it again until the input empties, i.e. the message went.
    for _ in range(10):
        try:
            page.wait_for_function("el => el.value === ''", arg=box.element_handle(), timeout=2_000)
            return
        except Exception:  # Playwright's TimeoutError: not sent yet
            box.press("Enter")
    raise AssertionError(f"the chat input did not send {text!r}")


def search_pacs(page, field: str, value: str):
    """Open the sidebar's PACS search, fill ``field`` with ``value``, search, and wait for the
    results; returns the sidebar."""
    sidebar = page.locator("[data-testid=stSidebar]")
    sidebar.get_by_text("Open from PACS").click()
    wait_idle(page)
    box = sidebar.get_by_role("textbox", name=field)
    box.fill(value)
    box.press("Tab")
    wait_idle(page)
    # A click that lands while the app reruns (it does once after loading; a busy machine makes
    # that slow) can be dropped: search again until the results are there.
    for _ in range(3):
        sidebar.get_by_role("button", name="Search PACS").click()
        try:
            sidebar.get_by_role("button", name="Open study").wait_for(timeout=30_000)
        except Exception:  # Playwright's TimeoutError: no results (yet)
            wait_idle(page)
            continue
        wait_idle(page)
        return sidebar
    raise AssertionError(f"the PACS search for {field} = {value!r} showed no study")


def screenshot(page, name: str) -> Path:
    """A full-page screenshot (Streamlit scrolls inside .stMain: grow the viewport first, also to
    the study column's whole height, which scrolls on its own beside the chat)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    with _grown(page):
        page.screenshot(path=str(path), full_page=True)
    return path


def element_screenshot(page, element, path: Path) -> Path:
    """A screenshot of one element, whole: the viewport grown as for ``screenshot`` (an element
    below the study column's fold is otherwise captured blank)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _grown(page):
        element.screenshot(path=str(path))
    return path


@contextmanager
def _grown(page) -> Iterator[None]:
    height = page.evaluate("""() => Math.max((document.querySelector('.stMain') || document.body).scrollHeight,
        ...[...document.querySelectorAll('[data-testid=stColumn]')].map(c => c.scrollHeight + 150))""")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 100, 12000))})
    try:
        yield
    finally:
        page.set_viewport_size(size)
