"""The evaluation manifest: images with lesion boxes, as in ``../shared/data/eval/manifest.csv``.

One row per lesion (a normal image has one row with an empty ``lesion_id``), boxes inclusive in
native pixels, centres with the top-left pixel's centre at (0, 0). LIDC rows marked
``nodule_lt3mm`` (3 mm point marks) are scored as their own group.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from tools.coordinates import BoxPx

SMALL_NODULE = "nodule_lt3mm"


@dataclass(frozen=True)
class Lesion:
    box: BoxPx
    center: tuple[float, float]
    label: str


@dataclass
class EvalImage:
    """One image of the manifest with all its lesions (empty for a normal image)."""

    path: Path
    dataset: str
    modality: str
    width: int
    height: int
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def diagonal(self) -> float:
        return math.hypot(self.width, self.height)

    @property
    def group(self) -> str:
        """The row group for the tables: LIDC images with only <3 mm marks stand apart."""
        if self.lesions and all(l.label == SMALL_NODULE for l in self.lesions):
            return f"{self.dataset} (<3 mm)"
        return self.dataset

    def scored_lesions(self) -> list[Lesion]:
        """Lesions that count for hits: <3 mm marks only where nothing else is marked."""
        regular = [l for l in self.lesions if l.label != SMALL_NODULE]
        return regular or self.lesions


def read_manifest(manifest: Path) -> list[EvalImage]:
    """Group the manifest's rows by image; paths resolve relative to the manifest's folder."""
    images: dict[str, EvalImage] = {}
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["image_path"]
            image = images.get(key)
            if image is None:
                image = images[key] = EvalImage(
                    path=manifest.parent / key, dataset=row["dataset"], modality=row["modality"],
                    width=int(row["width"]), height=int(row["height"]))
            if row["lesion_id"] and row["bbox_x0"]:
                box = BoxPx(**{k: float(row[f"bbox_{k}"]) for k in ("x0", "y0", "x1", "y1")})
                image.lesions.append(Lesion(box=box, center=(float(row["center_x"]), float(row["center_y"])),
                                            label=row["label"]))
    return list(images.values())
