"""`aide-ray figures`: draw a training run's curves, label-correction panels and Dice scatter."""

from __future__ import annotations

import argparse
from pathlib import Path

from aide_ray.eval.figures_run import write_run_figures
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (metrics.csv, train_scores.csv, ...)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RUN_DIR/figures)")
    parser.add_argument("--max-samples", type=int, default=8, help="label-correction samples drawn (default: 8)")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        raise InputError(f"run folder {args.run_dir} does not exist")
    if args.max_samples < 1:
        raise InputError(f"--max-samples must be >= 1, got {args.max_samples}")
    result = write_run_figures(args.run_dir, args.out, max_samples=args.max_samples)
    for note in result.skipped:
        print(f"skipped {note}")
    drawn = [n for n in result.written if n.endswith(".png")]
    print(f"{len(drawn)} figure(s) written to {result.out_dir} (see {result.out_dir / 'index.md'})")
    return 0
