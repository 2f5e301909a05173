"""Measure the offline detector per kind of image and write the table Loupe ships with it.

Runs the cross-validated evaluation of ``loupe eval --cv`` on a manifest (default: the shared
dev set) and writes ``tools/detection/performance.json`` (or ``--out``): per kind of image, the
sensitivity at the anomaly threshold, the precision of a flagged top finding, hit@1/hit@3, the
false-positive rate on normal images and the images behind each figure, with the dev set's size,
hash and the date (``agent.evaluation.performance``). A site can measure Loupe on its own
images the same way and point ``LOUPE_PERFORMANCE_TABLE`` at the result.

It also prints the calibration's reliability under the same cross-validation: the expected
calibration error (10 bins) of the top-five and of the top confidence per kind, for the
calibration as fitted before this table existed (every image of a modality, an abdominal MR
among the brain MRs) and as fitted now (only images the detector is built for); and the
in-sample constants for ``tools.detection.scoring.CALIBRATION``.

Run: ``.venv/bin/python bench/detector_performance.py [MANIFEST.csv] [--out FILE] [--folds K]``
(about a minute on the dev set). ``tests/test_performance_table.py`` regenerates the table and
checks it against the shipped one.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.evaluation.calibration import TOP_CANDIDATES, calibrated, fit_calibration  # noqa: E402
from agent.evaluation.crossval import (ImageRuns, analyse, calibration_samples, choose_rules,  # noqa: E402
                                       cross_validate, fold_of)
from agent.evaluation.manifest import read_manifest  # noqa: E402
from agent.evaluation.performance import (counted, expected_calibration_error, format_performance,  # noqa: E402
                                          performance_by_kind, performance_table)
from agent.store.files import write_atomically  # noqa: E402
from tools.detection.performance import PERFORMANCE_FILE  # noqa: E402
from tools.detection.scoring import ANOMALY_THRESHOLD, CALIBRATION, RULES  # noqa: E402
from tools.study import StudyLimits  # noqa: E402

DEV_MANIFEST = ROOT.parent / "shared" / "data" / "eval" / "manifest.csv"
SHIPPED = ROOT / "tools" / "detection" / PERFORMANCE_FILE


def _reliability(runs: list[ImageRuns], k: int, fit_on_all: bool) -> dict[str, tuple[float | None, float | None]]:
    """Per kind: cross-validated ECE of the top-five and of the top confidence, the calibration
    fitted on each fold's training images of the family (all of them, or only those within the
    detector's competence), rules chosen as ``cross_validate`` chooses them."""
    folds = fold_of([run.image for run in runs], k)
    top5: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    top1: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for fold in range(k):
        for family in sorted({run.family for run in runs}):
            train = [r for r in runs if r.family == family and folds[r.image.path] != fold]
            competent = [r for r in train if r.kind is not None]
            rules = choose_rules(competent, family)
            fitted = train if fit_on_all else competent
            samples = [(d.score, any(l.box.contains(d.x, d.y) for l in r.image.scored_lesions()))
                       for r in fitted for d in r.by_rules[rules][:TOP_CANDIDATES]]
            a, b = fit_calibration(samples) or CALIBRATION[family]
            for run in runs:
                if run.family != family or folds[run.image.path] != fold or run.kind is None or not counted(run.image):
                    continue
                lesions = run.image.scored_lesions()
                pairs = [(calibrated(d.score, a, b), any(l.box.contains(d.x, d.y) for l in lesions))
                         for d in run.by_rules[rules][:TOP_CANDIDATES]]
                top5[run.kind] += pairs
                top1[run.kind] += pairs[:1]
    return {kind: (expected_calibration_error(top5[kind]), expected_calibration_error(top1[kind])) for kind in top5}


def _print_reliability(runs: list[ImageRuns], k: int) -> None:
    before, after = _reliability(runs, k, fit_on_all=True), _reliability(runs, k, fit_on_all=False)
    print(f"### Calibration reliability, {k}-fold cross-validated (expected calibration error, 10 bins)\n")
    print("| kind | top-5 ECE before | top-5 ECE after | top-1 ECE before | top-1 ECE after |")
    print("|---|---:|---:|---:|---:|")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for kind in after:
        print(f"| {kind} | {fmt(before[kind][0])} | {fmt(after[kind][0])} | {fmt(before[kind][1])} | "
              f"{fmt(after[kind][1])} |")
    print("\n### In-sample calibration constants (images within the detector's competence)\n")
    print("| family | a | b | shipped a, b |")
    print("|---|---:|---:|---|")
    for family in sorted({run.family for run in runs}):
        fitted = fit_calibration(calibration_samples([r for r in runs if r.family == family], RULES))
        if fitted is not None:
            print(f"| {family} | {fitted[0]:.3f} | {fitted[1]:.3f} | {CALIBRATION[family]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", nargs="?", type=Path, default=DEV_MANIFEST)
    parser.add_argument("--out", type=Path, default=SHIPPED, help="where to write the table")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quiet", action="store_true", help="write the table only, print nothing else")
    args = parser.parse_args()
    images = read_manifest(args.manifest)
    runs, problems = analyse(images, StudyLimits())
    if problems:
        sys.exit("error: some images could not be analysed:\n" + "\n".join(problems))
    result = cross_validate(runs, args.folds)
    table = performance_table(args.manifest, runs, result.held_out, k=args.folds, threshold=ANOMALY_THRESHOLD)
    write_atomically(args.out, (table.model_dump_json(indent=2) + "\n").encode())
    if args.quiet:
        return
    print(format_performance("In-sample (shipped rules and calibration)",
                             performance_by_kind(runs, result.shipped, ANOMALY_THRESHOLD)))
    print()
    print(format_performance(f"{args.folds}-fold cross-validated (written to {args.out})", table.kinds))
    print()
    _print_reliability(runs, args.folds)


if __name__ == "__main__":
    main()
