"""``loupe info PATH... [--json] [--modality M]``: a study summary.

The JSON keys include ``modality, rows, columns, frames, photometric, pixel_spacing_mm, window,
body_part`` (a contract other issues and checks rely on); never PHI."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.cli.parsing import note_assumed_modality, source_of
from agent.settings import LoupeSettings
from tools.study import Study, open_study


def add_parser(commands) -> None:
    info = commands.add_parser("info", help="Summarise a study (DICOM file, folder, .zip, PNG/JPEG).")
    info.add_argument("paths", nargs="+", metavar="PATH")
    info.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    info.add_argument("--modality", help="Modality of a PNG/JPEG image (DICOM headers win).")
    info.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    with open_study(source_of(args.paths, settings), limits=settings.study_limits(), modality=args.modality) as study:
        summary = study_summary(study)
    if args.json:
        print(json.dumps(summary, indent=2))  # modality_assumed says it there
    else:
        note_assumed_modality(summary["modality_assumed"])
        print_text(summary)


def study_summary(study: Study) -> dict[str, Any]:
    """The JSON summary of ``loupe info``: safe metadata only, never PHI."""
    safe = study.safe
    rendered = study.render(0)
    return {
        "study_id": study.id,
        "kind": safe.kind,
        "modality": safe.modality,
        "modality_assumed": safe.modality_assumed(),
        "body_part": safe.body_part,
        "rows": safe.rows,
        "columns": safe.columns,
        "frames": safe.frames,
        "photometric": safe.photometric,
        "samples_per_pixel": safe.samples_per_pixel,
        "bits_stored": safe.bits_stored,
        "pixel_spacing_mm": list(safe.pixel_spacing_mm) if safe.pixel_spacing_mm else None,
        "spacing_source": safe.spacing_source,
        "slice_thickness_mm": safe.slice_thickness_mm,
        "spacing_between_slices_mm": safe.spacing_between_slices_mm,
        "window": {"center": safe.window.center, "width": safe.window.width} if safe.window else None,
        "display_window": (
            {"center": rendered.window.center, "width": rendered.window.width, "source": rendered.window.name}
            if rendered.window else None
        ),
        "window_presets": sorted(study.window_presets()),
        "physical_unit": safe.physical_unit,
        "transfer_syntax": safe.transfer_syntax,
        "sop_class": safe.sop_class,
        "image_format": safe.image_format,
        "burned_in_annotation": safe.burned_in_annotation,
    }


def print_text(summary: dict[str, Any]) -> None:
    spacing = summary["pixel_spacing_mm"]
    lines = [
        f"modality      {summary['modality'] or 'unknown'}" + (f" ({summary['body_part']})" if summary["body_part"] else ""),
        f"size          {summary['columns']} x {summary['rows']} px, {summary['frames']} frame(s)",
        f"photometric   {summary['photometric']}",
        "spacing       " + (f"{spacing[0]:.4g} x {spacing[1]:.4g} mm (row x column, {summary['spacing_source']})"
                            if spacing else "unknown (measurements in px)"),
    ]
    if summary["window"]:
        lines.append(f"window        {summary['window']['center']:g} / {summary['window']['width']:g} (header)")
    if summary["window_presets"]:
        lines.append(f"presets       {', '.join(summary['window_presets'])}")
    if summary["transfer_syntax"]:
        lines.append(f"encoding      {summary['transfer_syntax']}")
    print("\n".join(lines))
