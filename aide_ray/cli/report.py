"""`aide-ray report`: a training run's report page, one self-contained HTML file (RUN_DIR/report.html)."""

from __future__ import annotations

import argparse

from aide_ray.eval.run_report import write_run_report

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (metrics.csv, config.yaml, ...)")
    parser.add_argument("--out", metavar="FILE", default=None, help="the HTML file (default: RUN_DIR/report.html)")
    parser.add_argument("--eval", metavar="DIR", action="append", default=None, dest="evals",
                        help="an `aide-ray evaluate --out` folder to show (repeatable; default: RUN_DIR's "
                             "subfolders holding a summary.csv)")
    parser.add_argument("--max-samples", type=int, default=8, help="label-correction samples drawn (default: 8)")


def run(args: argparse.Namespace) -> int:
    report = write_run_report(args.run_dir, args.out, evals=args.evals, max_samples=args.max_samples)
    for note in report.skipped:
        print(f"left out {note}")
    shown = f"{len(report.figures)} figure(s), {len(report.evals)} evaluation folder(s)"
    print(f"Report page ({shown}): {report.path}")
    return 0
