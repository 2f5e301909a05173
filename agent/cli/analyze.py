"""``loupe analyze STUDY --out DIR [--backend offline|gemini] [--json]``: load, detect, verify,
fit and render; writes ``DIR/overlay.png`` and ``DIR/findings.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.parsing import note_assumed_modality, source_of
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    analyze = commands.add_parser("analyze", help="Detect, verify, measure and draw the findings of a study.")
    analyze.add_argument("paths", nargs="+", metavar="STUDY")
    analyze.add_argument("--out", required=True, type=Path, help="Folder for overlay.png and findings.json.")
    analyze.add_argument("--backend", choices=["offline", "gemini", "openai"], default="offline",
                         help="gemini / openai: the vision model proposes locations too (verified against the pixels).")
    analyze.add_argument("--confirm-no-burned-in-text", action="store_true", dest="confirm_images",
                         help="You checked the image: no identifying text on it, so the model may see its pixels.")
    analyze.add_argument("--json", action="store_true", help="Print the findings as JSON.")
    analyze.add_argument("--modality", help="Modality of a PNG/JPEG image.")
    analyze.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.analysis import analyze

    result = analyze(source_of(args.paths, settings), args.out, settings=settings, backend=args.backend, modality=args.modality,
                     confirm_images=args.confirm_images)
    if args.json:  # modality_assumed says it there
        print(json.dumps(result.model_dump(), indent=2))
        return
    note_assumed_modality(result.modality_assumed)
    print(result.summary)
    for finding in result.findings:
        size = finding["size_mm"]
        size_text = f"{size[0]:.1f} x {size[1]:.1f} mm" if size else "size in px only"
        x, y = finding["center_px"]
        print(f"  {finding['id']}  {finding['label']}  at ({x:.0f}, {y:.0f}) px, frame {finding['frame']}, "
              f"{size_text}, confidence {finding['confidence']:.2f}, {finding['verification']['status']}")
    print(f"wrote {', '.join(result.files)} to {args.out}")
