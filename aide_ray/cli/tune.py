"""`aide-ray tune`: the same code as `jobs/tune_aide.py`."""

from __future__ import annotations

import argparse

from aide_ray.config import demo_config, load_config
from aide_ray.distributed.tune import SEARCH_ALGORITHMS, check_search, default_space, load_space, run_sweep

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="base YAML config of every trial; without it, the demo data and demo settings")
    parser.add_argument("--space", help="search space YAML (dotted config key -> distribution); "
                                        "default: jobs/configs/space.default.yaml's space (R, T, warm-up, lambda)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="trials to run (random, optuna; default 10) or repetitions of the grid (grid; default 1)")
    parser.add_argument("--search", choices=SEARCH_ALGORITHMS, default="random",
                        help="random (default), grid ({grid: [...]} entries enumerated) or optuna "
                             "(needs `pip install optuna`)")
    parser.add_argument("--out", help="folder for results.csv, best_config.yaml and the plots "
                                      "(default: <run.storage_path>/<run.name>-tune)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as many as the cluster's CPUs/GPUs hold now; "
                             "set it on an autoscaling cluster)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the base config, e.g. epochs=40 workers=1")


def run(args: argparse.Namespace) -> int:
    # The whole config, the space and the search are validated here, before any Ray work starts.
    cfg = load_config(args.config, args.overrides) if args.config else demo_config(args.overrides)
    space = load_space(args.space, cfg) if args.space else default_space(cfg)
    num_samples = args.num_samples if args.num_samples is not None else (1 if args.search == "grid" else 10)
    check_search(args.search, space, num_samples)
    run_sweep(cfg, space, num_samples=num_samples, search=args.search, out=args.out,
              max_concurrent=args.max_concurrent)
    return 0
