"""The agent loop's own cost for a typical "Analyse this scan" turn, against the fake Gemini.

The fake server (tests/fake_gemini.py, on 127.0.0.1) answers instantly with a scripted turn:
detect_anomalies → render_overlay → a text answer. So the wall time of a turn is the tools'
time plus the loop's own overhead (SDK serialisation, base64 images, HTTP on loopback, history
conversion); the table reports that overhead apart. Image tokens are estimated with Gemini's
documented rule (an image ≤ 384 px on both sides costs 258 tokens; larger ones are tiled at
768 × 768, 258 tokens per tile) from the images actually sent, since the fake cannot count them.

Rows: the image downscaled to Loupe's default long side (1024 px) vs sent at full resolution
(the baseline, same process). A second table runs the same turn at 1024 px through the
OpenAI-compatible backend against its fake (tests/fake_openai.py, the real ``openai`` SDK),
beside Gemini's: the loop's overhead of each backend and the ratio to Gemini's.
Medians over ``--runs`` turns after one warm-up.

Run: ``.venv/bin/python bench/bench_agent.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.conversation import Conversation  # noqa: E402
from agent.events import ToolFinished, TurnFinished  # noqa: E402
from agent.models.gemini import GeminiBackend  # noqa: E402
from agent.models.openai_compatible import OpenAIBackend  # noqa: E402
from agent.settings import LoupeSettings  # noqa: E402
from tests import fake_openai  # noqa: E402
from tests.fake_gemini import FakeGemini, call_reply, image_bytes, text_reply  # noqa: E402

EVAL = ROOT.parent / "shared" / "data" / "eval"


def documented_image_tokens(width: int, height: int) -> int:
    if width <= 384 and height <= 384:
        return 258
    return math.ceil(width / 768) * math.ceil(height / 768) * 258


def study_2048(folder: Path) -> Path:
    """A 2048² chest radiograph (the eval's 1024² NIH image upsampled): a typical CR/DX size."""
    source = EVAL / "nih_cxr14" / "00010277_000.png"
    target = folder / "cxr-2048.png"
    with Image.open(source) as image:
        image.convert("L").resize((2048, 2048), Image.Resampling.BICUBIC).save(target)
    return target


def one_turn(fake: FakeGemini, study: Path, max_side: int) -> dict[str, float]:
    settings = LoupeSettings(_env_file=None, gemini_api_key="bench", model_image_max_side=max_side,
                             retry_initial_s=0.01)
    conversation = Conversation.start(settings, study, modality="DX")
    conversation.confirm_no_burned_in_text()  # the privacy boundary holds images until confirmed
    backend = GeminiBackend(settings)
    fake.requests.clear()
    fake.script(call_reply(("detect_anomalies", {"use_vision_model": False})),
                call_reply(("render_overlay", {"layers": ["annotated"]})),
                text_reply("F1 is the strongest candidate."))
    started = time.perf_counter()
    events = list(conversation.ask("Analyse this scan", backend))
    wall_ms = (time.perf_counter() - started) * 1000
    tools_ms = sum(e.duration_ms for e in events if isinstance(e, ToolFinished))
    finished = next(e for e in events if isinstance(e, TurnFinished))
    # Each request resends the history; count each distinct image once per request it rides in.
    image_tokens = 0
    request_bytes = 0
    for request in fake.calls():
        request_bytes += len(request.text()) + sum(len(i["data"]) for i in request.images())
        for inline in request.images():
            with Image.open(io.BytesIO(image_bytes(inline))) as image:
                image_tokens += documented_image_tokens(*image.size)
    return {"wall_ms": wall_ms, "tools_ms": tools_ms, "overhead_ms": wall_ms - tools_ms,
            "model_calls": finished.usage.model_calls, "image_tokens": image_tokens,
            "request_kb": request_bytes / 1024}


def openai_turn(fake: fake_openai.FakeOpenAI, study: Path) -> dict[str, float]:
    """The same turn through the OpenAI-compatible backend, at the default 1024 px."""
    settings = LoupeSettings(_env_file=None, backend="openai", openai_base_url=fake.url, openai_model="bench",
                             retry_initial_s=0.01)
    conversation = Conversation.start(settings, study, modality="DX")
    conversation.confirm_no_burned_in_text()
    fake.requests.clear()
    fake.script(fake_openai.call_reply(("detect_anomalies", {"use_vision_model": False})),
                fake_openai.call_reply(("render_overlay", {"layers": ["annotated"]})),
                fake_openai.text_reply("F1 is the strongest candidate."))
    started = time.perf_counter()
    events = list(conversation.ask("Analyse this scan", OpenAIBackend(settings)))
    wall_ms = (time.perf_counter() - started) * 1000
    tools_ms = sum(e.duration_ms for e in events if isinstance(e, ToolFinished))
    request_bytes = sum(len(json.dumps(request.body)) for request in fake.calls())
    return {"wall_ms": wall_ms, "tools_ms": tools_ms, "overhead_ms": wall_ms - tools_ms,
            "request_kb": request_bytes / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    os.environ.pop("GOOGLE_API_KEY", None)
    rows = {}
    with tempfile.TemporaryDirectory() as folder, FakeGemini() as fake:
        os.environ["GOOGLE_GEMINI_BASE_URL"] = fake.url
        study = study_2048(Path(folder))
        for label, max_side in (("full resolution 2048 px (baseline)", 4096), ("downscaled to 1024 px (default)", 1024)):
            one_turn(fake, study, max_side)  # warm-up
            runs = [one_turn(fake, study, max_side) for _ in range(args.runs)]
            rows[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        with fake_openai.FakeOpenAI() as openai_fake:
            openai_turn(openai_fake, study)  # warm-up
            runs = [openai_turn(openai_fake, study) for _ in range(args.runs)]
            openai_row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    baseline = rows["full resolution 2048 px (baseline)"]
    print(f"Typical 'Analyse this scan' turn on a 2048² radiograph, fake Gemini on loopback; median of {args.runs}.\n")
    print("| image sent | turn ms | tools ms | loop overhead ms | overhead vs baseline | model calls | image tokens (documented rule) | tokens vs baseline | request KB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['wall_ms']:.0f} | {row['tools_ms']:.0f} | {row['overhead_ms']:.0f} | "
              f"{row['overhead_ms'] / baseline['overhead_ms']:.2f} | {row['model_calls']:.0f} | {row['image_tokens']:.0f} | "
              f"{row['image_tokens'] / baseline['image_tokens']:.2f} | {row['request_kb']:.0f} |")
    gemini = rows["downscaled to 1024 px (default)"]
    print("\nThe same turn at 1024 px by backend, each against its loopback fake through its real SDK.\n")
    print("| backend | turn ms | tools ms | loop overhead ms | overhead vs Gemini | request KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in (("Gemini (google-genai)", gemini), ("OpenAI-compatible (openai)", openai_row)):
        print(f"| {label} | {row['wall_ms']:.0f} | {row['tools_ms']:.0f} | {row['overhead_ms']:.0f} | "
              f"{row['overhead_ms'] / gemini['overhead_ms']:.2f} | {row['request_kb']:.0f} |")


if __name__ == "__main__":
    main()
