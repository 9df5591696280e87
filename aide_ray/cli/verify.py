"""`aide-ray verify SHARDS_DIR`: check Parquet shards against their dataset.json by hand.

Training and ``data-summary`` run the same check (without reading every row
group back) before any Ray work; this command also reads every row group, so
it finds a garbled shard even where ``dataset.json`` records no hashes.
"""

from __future__ import annotations

import argparse

from aide_ray.data.verify import SHARD_FILES_KEY, verify_shards

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", metavar="SHARDS_DIR", help="folder written by `aide-ray ingest`")
    parser.add_argument("--quick", action="store_true",
                        help="only what training checks: sizes, hashes, footers and row counts (no row group reads)")


def run(args: argparse.Namespace) -> int:
    info = verify_shards(args.shards, read_rows=not args.quick)
    recorded = "sizes, SHA-256 and row counts" if info.get(SHARD_FILES_KEY) else "row counts (no sizes or hashes " \
        "recorded at ingest)"
    read = "footers" if args.quick else "every row group"
    print(f"OK {args.shards}: {len(info['shards'])} shard(s), {info['num_samples']} rows; checked {recorded} "
          f"and read {read}")
    return 0
