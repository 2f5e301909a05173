"""The app in a real browser (Chromium via Playwright, offline backend): what a clinician waits for.

- upload → first overlay: a 512² CT slice dropped into the chat with "Analyse this scan", until
  the annotated overlay is on the page and the app is idle;
- reload of a 20-turn session: opening ``?chat=ID`` of a stored 20-turn conversation until the
  latest turns are on the page (the app shows the last 6; earlier ones on request) and it is idle;
- slice change → new image on screen: in a session on the 8-slice LIDC CT series (512²), a
  click on the viewer's "Next" (or "Prev") until the viewer's image element holds the new
  slice's picture (its data URL changed) — what a clinician scrolling a series waits for;
- baseline (same process): opening the app on a fresh session until idle.

Medians of ``--runs`` runs after one warm-up; ratios against the baseline.

Run: ``.venv/bin/python bench/bench_ui.py [--runs N] [--breakdown]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.conversation import Conversation  # noqa: E402
from agent.models.planner import OfflinePlanner  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from agent.store.database import Store  # noqa: E402
from tests.browser import chromium_page, send_message, served_app, wait_idle  # noqa: E402

CT_SERIES = ROOT.parent / "shared" / "data" / "eval" / "lidc_ct" / "LIDC-IDRI-0002"
CT_512 = CT_SERIES / "z-0089.50.dcm"
QUESTIONS = ("Analyse this scan", "Where is the lesion and how big?", "Show the heatmap", "Draft a report")


def stored_session(data_dir: Path, turns: int) -> str:
    """A stored conversation of ``turns`` offline turns, owned by the browser's user."""
    settings = LoupeSettings(_env_file=None, data_dir=data_dir, user="dr-browser")
    store = Store.for_data_dir(data_dir)
    conversation = Conversation.start(settings, CT_512, store=store, owner="dr-browser")
    for index in range(turns):
        list(conversation.ask(QUESTIONS[index % len(QUESTIONS)], OfflinePlanner()))
    store.close()
    return conversation.session_id


def series_session(data_dir: Path) -> str:
    """A stored session with the 8-slice CT series open (no turn yet)."""
    settings = LoupeSettings(_env_file=None, data_dir=data_dir, user="dr-browser")
    store = Store.for_data_dir(data_dir)
    conversation = Conversation.start(settings, CT_SERIES, store=store, owner="dr-browser")
    store.close()
    return conversation.session_id


def slice_changes(page, url: str, session_id: str, runs: int) -> list[float]:
    """Seconds from a click on Next/Prev to the new slice's picture in the viewer's image."""
    page.goto(f"{url}/?chat={session_id}")
    wait_idle(page)
    image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
    image.wait_for(timeout=60_000)
    viewer = page.locator(".st-key-viewer")
    times = []
    for index in range(runs + 1):  # the first is a warm-up
        before = image.get_attribute("src")
        button = viewer.get_by_role("button", name=re.compile("Next" if index % 2 == 0 else "Prev")).first
        started = time.perf_counter()
        button.click()
        deadline = started + 30
        while image.get_attribute("src") == before and time.perf_counter() < deadline:
            page.wait_for_timeout(5)
        times.append(time.perf_counter() - started)
        wait_idle(page)
    return times[1:]


def time_fresh_app(page, url: str) -> float:
    started = time.perf_counter()
    page.goto(url)
    wait_idle(page)
    page.get_by_text("Analyse this scan").first.wait_for()
    return time.perf_counter() - started


def time_upload_to_overlay(page, url: str) -> float:
    page.goto(url)
    wait_idle(page)
    started = time.perf_counter()
    send_message(page, "Analyse this scan", files=[CT_512])
    page.locator("[data-testid=stChatMessage] img").first.wait_for(timeout=120_000)
    wait_idle(page)
    return time.perf_counter() - started


def time_reload(page, url: str, session_id: str, messages: int) -> float:
    started = time.perf_counter()
    page.goto(f"{url}/?chat={session_id}")
    wait_idle(page)
    page.locator("[data-testid=stChatMessage]").nth(messages - 1).wait_for(timeout=120_000)
    return time.perf_counter() - started


def reload_phases(page, url: str, session_id: str, messages: int) -> dict[str, float]:
    """Where a reload's time goes: the page and its websocket, the first replayed message (the
    script has run and the browser is drawing), then every message with the app idle."""
    started = time.perf_counter()
    page.goto(f"{url}/?chat={session_id}")
    phases = {"page loaded": time.perf_counter() - started}
    page.wait_for_selector("[data-testid=stApp][data-test-connection-state=CONNECTED]")
    phases["connected"] = time.perf_counter() - started
    page.locator("[data-testid=stChatMessage]").first.wait_for(timeout=120_000)
    phases["first message drawn"] = time.perf_counter() - started
    wait_idle(page)
    page.locator("[data-testid=stChatMessage]").nth(messages - 1).wait_for(timeout=120_000)
    phases["all messages, idle"] = time.perf_counter() - started
    return phases


def median_phases(runs: int, measure) -> dict[str, float]:
    measured = [measure() for _ in range(runs)]
    return {name: statistics.median(m[name] for m in measured) for name in measured[0]}


def median_of(runs: int, measure) -> float:
    measure()  # warm-up
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true",
                        help="then, in as many more runs, time the phases of the reload")
    args = parser.parse_args()
    os.environ.pop("GEMINI_API_KEY", None)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        session_id = stored_session(data_dir, 20)
        series_id = series_session(data_dir)
        with served_app(data_dir) as url, chromium_page() as page:
            slices = slice_changes(page, url, series_id, max(10, 2 * args.runs))
            baseline = median_of(args.runs, lambda: time_fresh_app(page, url))
            upload = median_of(args.runs, lambda: time_upload_to_overlay(page, url))
            reload = median_of(args.runs, lambda: time_reload(page, url, session_id, 12))
            if args.breakdown:
                phases = median_phases(args.runs, lambda: reload_phases(page, url, session_id, 12))
    print(f"Real browser (Chromium), offline backend; median of {args.runs} runs after a warm-up.\n")
    print("| measure | median s | vs baseline | target |")
    print("|---|---:|---:|---|")
    print(f"| baseline: open the app on a fresh session | {baseline:.2f} | 1.00 | — |")
    print(f"| upload 512² CT → first overlay on screen | {upload:.2f} | {upload / baseline:.2f} | ≤ 3 s |")
    print(f"| reload a 20-turn session | {reload:.2f} | {reload / baseline:.2f} | ≤ 2 s |")
    change = statistics.median(slices)
    print(f"| slice change → new image on screen (512² CT series, {len(slices)} changes) | {change:.3f} | "
          f"{change / baseline:.2f} | ≤ 0.3 s |")
    if args.breakdown:
        print("\nReload, median time since the request (separate runs):\n")
        print("| phase | s |")
        print("|---|---:|")
        for name, seconds in phases.items():
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
