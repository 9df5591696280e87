"""`aide-ray train`: the same code as `jobs/train_aide.py`; ``--backend`` picks where the one loop runs.

With ``--resume RUN_DIR`` the run goes on with the settings it was started
with (the config saved in its checkpoint); only the ``--config`` file and the
``key=value`` overrides given now change it, and a change the checkpoint cannot
take (``model.base_width``, ``method``, other shards) fails before any Ray work.
"""

from __future__ import annotations

import argparse
import os

from aide_ray.config import demo_config, load_config
from aide_ray.distributed.console import RAY_DATA_LOGGING_CONFIG
from aide_ray.engine.run_setup import resume_config

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config; without it, the demo data and CPU-friendly demo settings "
                                         "(with --resume: the run's own config, this file's keys on top)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its newest checkpoint that verifies, with its own config")
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: Ray Data + Ray Train workers (default; embedded Ray unless RAY_ADDRESS is set); "
                             "local: this process, CPU or one GPU, no Ray")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own progress bars, dataset execution lines and INFO logs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. aide.temperature=0.3 epochs=10")


def run(args: argparse.Namespace) -> int:
    # The whole config is validated here, before any Ray work starts.
    if args.resume:
        cfg = resume_config(args.resume, config_file=args.config, overrides=args.overrides)
    else:
        cfg = load_config(args.config, args.overrides) if args.config else demo_config(args.overrides)
    if args.backend == "local":
        from aide_ray.engine.local import train_local  # noqa: PLC0415  (no Ray import on the local path)

        train_local(cfg, resume=args.resume)
    else:
        if not args.verbose:
            # Before Ray Data is imported: it reads its logging configuration once, at import.
            os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING_CONFIG))
        from aide_ray.distributed.trainer import run_training  # noqa: PLC0415  (imports Ray)

        run_training(cfg, resume=args.resume, verbose=args.verbose)
    return 0
