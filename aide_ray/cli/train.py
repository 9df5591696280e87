"""`aide-ray train`: the same code as `jobs/train_aide.py`; ``--backend`` picks where the one loop runs."""

from __future__ import annotations

import argparse

from aide_ray.config import demo_config, load_config

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config; without it, the demo data and CPU-friendly demo settings")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest checkpoint")
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: Ray Data + Ray Train workers (default; embedded Ray unless RAY_ADDRESS is set); "
                             "local: this process, CPU or one GPU, no Ray")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. aide.temperature=0.3 epochs=10")


def run(args: argparse.Namespace) -> int:
    # The whole config is validated here, before any Ray work starts.
    cfg = load_config(args.config, args.overrides) if args.config else demo_config(args.overrides)
    if args.backend == "local":
        from aide_ray.engine.local import train_local  # noqa: PLC0415  (no Ray import on the local path)

        train_local(cfg, resume=args.resume)
    else:
        from aide_ray.distributed.trainer import run_training  # noqa: PLC0415  (imports Ray)

        run_training(cfg, resume=args.resume)
    return 0
