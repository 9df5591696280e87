"""`aide-ray export-labels`: write a run's corrected training labels as NIfTI/PNG, in the inputs' geometry."""

from __future__ import annotations

import argparse

import numpy as np

from aide_ray.labels.export import LABELS_CSV, export_labels

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="finished run folder (or one of its checkpoint_* folders)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: <case_id>[_<annotator>]_net1/_net2/_agreement.nii.gz (.png for "
                             "2D raster inputs) and labels.csv")
    parser.add_argument("--shards", default=None, metavar="DIR",
                        help="the Parquet shards the run trained on (default: the run's data.shards, "
                             "or its demo data)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    table = export_labels(args.run_dir, args.out, shards=args.shards, overwrite=args.overwrite)
    print(f"{len(table)} case(s) written to {args.out}; per-case table: {args.out}/{LABELS_CSV}")
    if len(table):
        for net in [c[len("corrected_slices_"):] for c in table.columns if c.startswith("corrected_slices_")]:
            clean = table[f"dice_{net}_vs_clean"].to_numpy(dtype=float)
            vs_clean = f", mean Dice vs clean {np.nanmean(clean):.4f}" if np.isfinite(clean).any() else ""
            print(f"  {net}: {int(table[f'corrected_slices_{net}'].sum())} of {int(table['slices'].sum())} "
                  f"slices corrected, mean Dice vs source {table[f'dice_{net}_vs_source'].mean():.4f}{vs_clean}")
    return 0
