"""`aide-ray data-summary SHARDS_DIR`: stream one epoch through Ray Data and print a summary.

Uses the running Ray session if there is one, joins ``RAY_ADDRESS`` if set,
else starts an embedded local one (4 logical CPUs, no dashboard, token auth off
as it binds 127.0.0.1) through :func:`aide_ray.distributed.runtime.init_ray`.
"""

from __future__ import annotations

import argparse

from aide_ray.data.verify import verify_shards
from aide_ray.distributed.runtime import init_ray
from aide_ray.distributed.shard_reader import summarize
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", metavar="SHARDS_DIR", help="folder written by `aide-ray ingest`")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per streamed batch (default 16)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    info = verify_shards(args.shards)  # one line naming a bad shard, before starting Ray
    init_ray(num_cpus=4, dashboard=False, log_to_driver=False)
    table = summarize(args.shards, batch_size=args.batch_size)
    a = table.attrs
    print(f"{args.shards}: {info['num_samples']} slices, shape [M, H, W] = {a['shape']}, "
          f"{len(info['shards'])} shard(s)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"{a['batches']} batches of <= {args.batch_size} in {a['seconds']:.2f} s "
          f"({a['slices_per_s']:.0f} slices/s)")
    return 0
