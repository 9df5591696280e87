"""`aide-ray ingest MANIFEST.csv --out SHARDS_DIR`: preprocess cases into Parquet slice shards."""

from __future__ import annotations

import argparse

from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST.csv", help="manifest CSV (see docs/data.md)")
    parser.add_argument("--out", required=True, metavar="SHARDS_DIR", help="output folder of Parquet shards")
    parser.add_argument("--spacing", type=float, nargs=2, metavar=("X", "Y"), default=None,
                        help="resample in-plane to this spacing in mm (default: keep each image's grid)")
    parser.add_argument("--size", type=int, default=64, help="slice size after centred crop/pad (default 64)")
    parser.add_argument("--normalize", choices=["zscore", "minmax"], default="zscore",
                        help="intensity normalisation per volume (default zscore)")
    parser.add_argument("--rows-per-shard", type=int, default=256, help="rows per Parquet file (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace SHARDS_DIR if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        prep = Preprocessing(target_spacing=tuple(args.spacing) if args.spacing else None, size=args.size,
                             normalize=args.normalize)
        if args.rows_per_shard < 1:
            raise ValueError(f"--rows-per-shard must be >= 1, got {args.rows_per_shard}")
    except ValueError as e:
        raise InputError(str(e)) from e
    out = ingest(args.manifest, args.out, prep, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite)
    info = load_dataset_info(out)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"]["split"].items())
    print(f"wrote {out}: {info['num_samples']} slices ({counts}) of shape {info['shape']} "
          f"in {len(info['shards'])} shard(s)")
    return 0
