"""`aide-ray train`: the same code as `jobs/train_aide.py`."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config; without it, the demo data and CPU-friendly demo settings")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. aide.temperature=0.3 epochs=10")


def run(args: argparse.Namespace) -> int:
    from aide_ray.config import demo_config, load_config
    from aide_ray.engine.train import run_training

    # The whole config is validated here, before any Ray work starts.
    cfg = load_config(args.config, args.overrides) if args.config else demo_config(args.overrides)
    run_training(cfg, resume=args.resume)
    return 0
