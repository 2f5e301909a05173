"""``loupe eval MANIFEST.csv [--json OUT] [--simulate-proposals SIGMA_PCT [--seed N] [--repeats K]] [--cv K]``:
localisation scores on a manifest of lesion boxes, beside the centre-guess baseline, and the
marked lesions' sizes against the readers' boxes; with ``--cv K`` also K-fold cross-validated
(the detector's rules and calibration, and the segmentation's settings, chosen without the
images they are scored on).

``loupe eval --change PAIRS.csv [--json OUT] [--cv K]``: the comparison with a prior on (prior,
current) pairs with a known truth (``bench/make_longitudinal.py``), beside the identity-transform
and "always stable" baselines (``agent.evaluation.change``); with ``--cv K`` also the in-sample
and K-fold cross-validated tables (the presence and growth rules' parameters chosen on the other
folds, folds grouped by source image) and the parameters each fold chose."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.parsing import fail
from agent.settings import LoupeSettings


def add_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="Score localisation and lesion sizes on a manifest of lesion boxes.")
    evaluate.add_argument("manifest", type=Path, metavar="MANIFEST.csv")
    evaluate.add_argument("--backend", choices=["offline", "gemini"], default="offline")
    evaluate.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="Also write the scores as JSON.")
    evaluate.add_argument("--simulate-proposals", type=float, metavar="SIGMA_PCT",
                          help="Verify simulated proposals shifted by this σ (%% of the diagonal).")
    evaluate.add_argument("--seed", type=int, help="Seed of the simulated proposals (default: a fixed seed).")
    evaluate.add_argument("--repeats", type=int, default=1, metavar="K",
                          help="Simulated proposals per image, from seeds SEED … SEED+K-1 (default 1).")
    evaluate.add_argument("--change", action="store_true",
                          help="MANIFEST is a pairs.csv of bench/make_longitudinal.py: score the comparison with a prior.")
    evaluate.add_argument("--cv", type=int, metavar="K",
                          help=("Also score the detector's tuned rules and calibration, and the size "
                                "segmentation's settings, by K-fold cross-validation; with --change, the "
                                "comparison's presence and growth parameters (folds grouped by source image)."))
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.evaluation.benchmark import run_eval

    if args.backend == "gemini":
        fail("the Gemini backend is not available in this version; use --backend offline")
    if args.change:
        _change(args)
        return
    if args.repeats < 1:
        fail("--repeats must be at least 1")
    if args.cv is not None and (args.cv < 2 or args.simulate_proposals is not None):
        fail("--cv takes at least 2 folds, and scores the detector (not simulated proposals)")
    seed = {} if args.seed is None else {"seed": args.seed}
    detector = None
    if settings.detector_model is not None:  # LOUPE_DETECTOR_MODEL: score a trained model instead
        if args.cv is not None or args.simulate_proposals is not None:
            fail("LOUPE_DETECTOR_MODEL is scored as it is: without --cv or --simulate-proposals")
        from agent.toolbox import detector_for

        detector = detector_for(settings)
    report = run_eval(args.manifest, limits=settings.study_limits(), simulate_sigma_pct=args.simulate_proposals,
                      repeats=args.repeats, cv=args.cv, detector=detector, **seed)
    print(report.text)
    if args.json_out:
        args.json_out.write_text(json.dumps(report.data, indent=2))


def _change(args: argparse.Namespace) -> None:
    from agent.evaluation.change import run_change_eval

    if args.simulate_proposals is not None:
        fail("--change scores the comparison as it is: without --simulate-proposals")
    if args.cv is not None and args.cv < 2:
        fail("--cv takes at least 2 folds")
    if not args.manifest.is_file():
        fail(f"no pairs manifest at {args.manifest}; make one with bench/make_longitudinal.py")
    text, data = run_change_eval(args.manifest, cv=args.cv)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(data, indent=2))
