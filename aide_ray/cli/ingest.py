"""`aide-ray ingest MANIFEST.csv --out SHARDS_DIR`: preprocess cases into Parquet slice shards.

MANIFEST.csv may also be a dataset folder (nnU-Net v2, Decathlon, images/ +
masks/): its manifest is written first to SHARDS_DIR.manifest.csv, beside the
shards, with `aide-ray manifest`'s defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aide_ray.cli.manifest import write_and_report
from aide_ray.data.ingest import ingest
from aide_ray.data.layouts import LayoutOptions
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST.csv",
                        help="manifest CSV, or a dataset folder to write one from (see docs/data.md)")
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
    out = ingest(_manifest_of(args), args.out, prep, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite)
    info = load_dataset_info(out)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"]["split"].items())
    print(f"wrote {out}: {info['num_samples']} slices ({counts}) of shape {info['shape']} "
          f"in {len(info['shards'])} shard(s)")
    return 0


def _manifest_of(args: argparse.Namespace) -> str:
    """The manifest to ingest: the argument, or for a dataset folder the manifest written from it."""
    source, out = Path(args.manifest), Path(args.out)
    if not source.is_dir():
        return args.manifest
    if out.exists() and not args.overwrite:  # before writing a manifest that ingest would then not use
        raise FileExistsError(f"{out} already exists; remove it or choose another output folder")
    csv = out.parent / f"{out.name}.manifest.csv"
    if csv.exists() and not args.overwrite:
        # Never clobber it: the user may have edited it since the last run.
        raise InputError(f"{csv} already exists (it may hold your edits): ingest it with "
                         f"`aide-ray ingest {csv} --out {out}`, or pass --overwrite to rebuild it from {source}")
    write_and_report(source, csv, "auto", LayoutOptions(), overwrite=True)
    return str(csv)
