"""`aide-ray`: one console script, one subcommand per task.

Each subcommand lives in its own module of this package exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their subcommand runs, so `aide-ray --help` is fast. Errors that aide_ray
raises on purpose become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aide_ray.exceptions import AideRayError

__all__ = ["main", "SUBCOMMANDS"]

# name -> (module under aide_ray.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("demo_data", "write the synthetic demo dataset (NIfTI volumes, HQ/LQ labels, manifest)"),
    "corrupt-labels": ("corrupt_labels", "simulate noisy or limited labels for a manifest (pymic-jsrt, limited)"),
    "manifest": ("manifest", "write a manifest from an nnU-Net v2, Decathlon or images/ + masks/ dataset folder"),
    "ingest": ("ingest", "turn a manifest of images and labels into Parquet slice shards"),
    "data-summary": ("data_summary", "stream one epoch of shards through Ray Data and print a summary"),
    "verify": ("verify", "check shards against their dataset.json (files, sizes, hashes, rows); names a bad file"),
    "train": ("train", "train AIDE or a baseline on Ray (embedded unless RAY_ADDRESS is set) or locally (--backend local)"),
    "tune": ("tune", "sweep hyperparameters with Ray Tune"),
    "predict": ("predict", "segment images with a trained checkpoint, in the input's geometry"),
    "evaluate": ("evaluate", "score predictions against references (Dice, ASSD, HD95, ...), with paired t-tests"),
    "export-labels": ("export_labels", "write a run's corrected training labels as NIfTI/PNG"),
    "figures": ("figures", "draw a training run's curves, label-correction panels and Dice scatter"),
    "report": ("report", "write a run's report page: one self-contained HTML file (RUN_DIR/report.html)"),
    "cluster": ("cluster", "start, stop or query a local Ray head bound to 127.0.0.1"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aide-ray",
        description="Annotation-efficient medical image segmentation (AIDE and baselines) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_line) in SUBCOMMANDS.items():
        # Parsers are filled lazily in main(); here only the name and help line.
        sub.add_parser(name, help=help_line, description=help_line, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_line = SUBCOMMANDS[name]
    module = importlib.import_module(f"aide_ray.cli.{module_name}")
    sub = argparse.ArgumentParser(prog=f"aide-ray {name}", description=help_line)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except AideRayError as e:
        print(f"aide-ray {name}: error: {e}", file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"aide-ray {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
