"""`aide-ray evaluate`: score predictions against a manifest's references and write a report."""

from __future__ import annotations

import argparse

from aide_ray.eval.evaluate import evaluate_predictions
from aide_ray.eval.report import format_comparison, format_summary

__all__ = ["add_arguments", "run"]


def _labels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--labels must be comma-separated class values like 1,2, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--labels must be foreground class values > 0, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of <case_id>.nii.gz (or .png) predictions")
    parser.add_argument("--ref", required=True, metavar="MANIFEST.csv", help="manifest holding the reference labels")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (per_case.csv, summary.csv, ...)")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"],
                        help="score only this split (default: every row with a reference)")
    parser.add_argument("--label-column", default="label", choices=["label", "clean_label"],
                        help="manifest column of the reference (default: label)")
    parser.add_argument("--compare", metavar="OTHER_PER_CASE.csv",
                        help="another run's per_case.csv: adds paired two-tailed t-tests (comparison.csv)")
    parser.add_argument("--labels", type=_labels, default=None, metavar="1,2",
                        help="classes scored separately (default: binary, or every class found)")
    parser.add_argument("--lcc", action="store_true", help="keep each class's largest connected component first")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes of the predictions first")
    parser.add_argument("--no-overlays", action="store_true", help="skip the best/median/worst overlay PNGs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    result = evaluate_predictions(args.pred, args.ref, args.out, split=args.split, label_column=args.label_column,
                                  compare=args.compare, labels=args.labels, largest_component=args.lcc,
                                  fill_holes=args.fill_holes, overlays=not args.no_overlays,
                                  overwrite=args.overwrite)
    print(f"{len(result.per_case)} case(s) scored; distances in mm (pixels for PNG references)")
    print(format_summary(result.summary))
    if result.comparison is not None:
        print("\npaired two-tailed t-tests (A = this run, B = --compare):")
        print(format_comparison(result.comparison, "A (this)", "B (other)"))
    print(f"\nreport: {result.out_dir / 'index.md'}")
    return 0
