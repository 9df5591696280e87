#!/usr/bin/env python
"""One-command recipes of the AIDE paper's three settings on real data, and the results page.

    python jobs/experiments/run.py noisy      --data ../shared/data/shenzhen_cxr_lungs --out runs/exp_noisy
    python jobs/experiments/run.py annotators --data ../shared/data/qubiq_brain_growth --out runs/exp_annotators
    python jobs/experiments/run.py limited    --data ../shared/data/shenzhen_cxr_lungs --out runs/exp_limited
    python jobs/experiments/run.py report runs/exp_noisy runs/exp_annotators runs/exp_limited --out docs/results.md
    python jobs/experiments/run.py report runs/exp_scribbles runs/exp_scribbles_qubiq --page scribbles \
        --out docs/results_scribbles.md   # after `run.py scribbles ...`, `run.py scribbles_qubiq ...`
    python jobs/experiments/run.py report runs/exp_methods_noisy runs/exp_methods_semi --page methods \
        --out docs/results_methods.md     # after `run.py methods_noisy ...`, `run.py methods_semi ...`
    python jobs/experiments/run.py archive runs/exp_scribbles_qubiq --to results/exp_scribbles_qubiq

Options of the three settings: ``--seeds 0 1 2`` (training seeds; the data split and the
label noise keep seed 0), ``--arms a b`` (a subset), ``--full`` (the paper's GPU size),
``--set key=value`` (extra config overrides for every arm; ``ARM:key=value`` for one),
``--backend ray|local`` (of ``aide-ray train``), ``--parallel N`` (arms trained at the same
time), ``--force`` (redo finished arms).

The settings are described in aide_ray/experiments/settings/*.yaml; this script only parses
the command line and calls aide_ray.experiments (pipeline.run_setting, report.write_results).
Per arm and seed: train -> predict the test split with the best checkpoint -> evaluate against
the HQ test masks (-> figures of AIDE arms). Finished steps are skipped on a rerun, so an
interrupted recipe continues where it stopped. Wall time of every stage goes to
``OUT/timing/``. ``archive`` keeps an experiment folder's numbers (no data, checkpoints or
predictions) where they can be versioned: ``report`` reads the archive as the folder, and an
archive copied back to OUT lets a setting go on where it stopped. See docs/experiments.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

EXP_DIR = Path(__file__).resolve().parent
# Pages `report` writes: each has its text before and after the tables in EXP_DIR/<page>_{preamble,postscript}.md.
PAGES = ("results", "benchmark", "recipe", "scribbles", "methods")
REPO = EXP_DIR.parents[1]
if str(REPO) not in sys.path:  # run from a fresh checkout without installing
    sys.path.insert(0, str(REPO))

from aide_ray.exceptions import AideRayError  # noqa: E402
from aide_ray.experiments.archive import archive_experiment  # noqa: E402
from aide_ray.experiments.catalogue import settings  # noqa: E402
from aide_ray.experiments.pipeline import BACKENDS, RunOptions, run_setting  # noqa: E402
from aide_ray.experiments.report import write_results  # noqa: E402


def run_report(args: argparse.Namespace) -> int:
    """docs/results.md from the experiment folders, between this folder's preamble and postscript."""
    cmd = "python jobs/experiments/run.py report " + " ".join(args.experiments) + f" --out {args.out}"
    if args.page != "results":
        cmd += f" --page {args.page}"
    if args.figures:
        cmd += " --figures " + " ".join(args.figures)
    preamble = (EXP_DIR / f"{args.page}_preamble.md").read_text(encoding="utf-8").replace("{command}", cmd)
    figure_runs = [(exp, run, f"{Path(exp).name} {run}") for exp, run in
                   (item.split(":", 1) for item in args.figures)]
    path = write_results(args.experiments, args.out, preamble=preamble,
                         postscript=(EXP_DIR / f"{args.page}_postscript.md").read_text(encoding="utf-8"), figure_runs=figure_runs)
    print(f"wrote {path}")
    return 0


def run_archive(args: argparse.Namespace) -> int:
    path, runs = archive_experiment(args.experiment, args.to)
    print(f"wrote {path} ({runs} evaluated runs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in settings().items():
        p = sub.add_parser(name, help=spec.title.replace("%", "%%"))  # argparse %-formats help ("10% HQ")
        p.add_argument("--data", required=True, help="dataset folder (see its SOURCE.md)")
        p.add_argument("--out", required=True, help="experiment folder (data, runs, predictions, reports)")
        p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
        p.add_argument("--arms", nargs="+", choices=spec.arm_names, help="arms to run (default: all)")
        p.add_argument("--full", action="store_true",
                       help="the paper's GPU size (aide_ray/experiments/full.yaml and the setting's `full`)")
        p.add_argument("--set", nargs="*", default=[], metavar="[ARM:]KEY=VALUE",
                       help="extra overrides for every arm, or with ARM: for that arm only")
        p.add_argument("--backend", choices=BACKENDS, default="ray",
                       help="`aide-ray train --backend`: ray (default) or local (one process, no Ray)")
        p.add_argument("--parallel", type=int, default=1, help="arms trained at the same time (default: 1)")
        p.add_argument("--force", action="store_true", help="redo arms that already finished")
        p.set_defaults(setting=name)
    p = sub.add_parser("report", help="write docs/results.md from experiment folders")
    p.add_argument("experiments", nargs="+", help="experiment folders (OUT of the settings)")
    p.add_argument("--out", default="docs/results.md", help="Markdown file (default: docs/results.md)")
    p.add_argument("--page", choices=PAGES, default="results",
                   help="the page's own text around the tables: results (docs/results.md, the paper's settings), "
                        "benchmark (docs/results_benchmark.md, the noisy-label benchmark), recipe "
                        "(docs/results_recipe.md, the paper's settings with AIDE's new recipe), scribbles "
                        "(docs/results_scribbles.md, the scribble methods against pCE) or methods "
                        "(docs/results_methods.md, the noisy-label and semi-supervised methods of the field)")
    p.add_argument("--figures", nargs="*", default=[], metavar="EXP:ARM_sSEED",
                   help="runs whose `aide-ray figures` PNGs are copied next to --out and shown")
    p = sub.add_parser("archive", help="copy an experiment folder's numbers (no data or checkpoints) to --to")
    p.add_argument("experiment", help="experiment folder (OUT of a setting)")
    p.add_argument("--to", required=True, help="archive folder, replaced if it exists (e.g. results/<OUT's name>)")
    return parser


def options(args: argparse.Namespace) -> RunOptions:
    """The parsed command line of a setting, as the pipeline takes it."""
    return RunOptions(data=args.data, out=args.out, seeds=tuple(args.seeds), arms=tuple(args.arms or ()),
                      full=args.full, overrides=tuple(args.set), backend=args.backend, parallel=args.parallel,
                      force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return run_report(args)
        if args.command == "archive":
            return run_archive(args)
        return run_setting(settings()[args.setting], options(args))
    except AideRayError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
