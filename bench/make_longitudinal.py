"""Make (prior, current) pairs with a known truth from the dev set, for measuring the comparison
with a prior (issue 27): ``agent.evaluation.longitudinal`` applied to each lesion of the manifest.

For each manifest row (one lesion on one image; a CT row is one slice of a LIDC series), one pair
of each status in turn — ``grown`` (factor 1.3–1.6), ``shrunk`` (0.6–0.8), ``new``, ``resolved``,
``stable`` —, with a random plausible transform (shift up to 5 %, tilt up to 8°, zoom ±10 %), a
gamma of 0.7–1.4 (not on CT: Hounsfield units are calibrated) and noise of 1–3 % of the grey
range, all from ``--seed``. The pairs are written
as 16-bit PNGs (``pairs/<n>-prior.png``, ``pairs/<n>-current.png``, the grey range kept in the
manifest) with ``pairs.csv``: the truth of each (status, factor, the transform current → prior,
the lesion's centre and radius in the current image). Nothing is written into the repository:
the output folder is given (``--out``), and the images stay derived from the eval set in place.

Run: ``.venv/bin/python bench/make_longitudinal.py --out /tmp/pairs [--manifest ...] [--seed 0]``
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.longitudinal import (  # noqa: E402
    lesion_from_box, make_pair, random_transform, write_manifest, written)
from tools.study import open_study  # noqa: E402

SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", ROOT.parent / "shared"))
STATUSES = ("grown", "shrunk", "new", "resolved", "stable")


def _pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".dcm":
        with open_study(path) as study:
            return np.asarray(study.physical(0), dtype=np.float64)
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=SHARED / "data" / "eval" / "manifest.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.manifest.exists():
        print(f"No manifest at {args.manifest}; nothing made.")
        return
    rng = np.random.default_rng(args.seed)
    (args.out / "pairs").mkdir(parents=True, exist_ok=True)
    with args.manifest.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["bbox_x0"]]  # images without a lesion: no pair
    written_rows: list[dict] = []
    for number, row in enumerate(rows):
        image = _pixels(args.manifest.parent / row["image_path"])
        lesion = lesion_from_box(*(float(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")))
        status = STATUSES[number % len(STATUSES)]
        factor = {"grown": rng.uniform(1.3, 1.6), "shrunk": rng.uniform(0.6, 0.8)}.get(status, 1.0)
        transform = random_transform(rng, image.shape)
        noise = float(rng.uniform(0.01, 0.03))  # of the grey range
        gamma = float(rng.uniform(0.7, 1.4))
        # CT values are calibrated (HU): another scanner setting changes the noise, not the grey scale.
        pair = make_pair(image, lesion, status, transform, factor=float(factor),
                         gamma=1.0 if row["modality"] == "CT" else gamma, noise=noise,
                         seed=args.seed * 100_000 + number)
        written_rows.append(written(pair, args.out / "pairs", number, dataset=row["dataset"],
                                    modality=row["modality"], source=row["image_path"]))
    for row in written_rows:
        row["prior"], row["current"] = f"pairs/{row['prior']}", f"pairs/{row['current']}"
    write_manifest(written_rows, args.out / "pairs.csv")
    counts = {s: sum(1 for w in written_rows if w["status"] == s) for s in STATUSES}
    print(f"{len(written_rows)} pairs in {args.out} ({', '.join(f'{n} {s}' for s, n in counts.items())}).")


if __name__ == "__main__":
    main()
