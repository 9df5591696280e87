"""`aide-ray corrupt-labels MANIFEST --out DIR --protocol ...`: simulate noisy or limited train labels."""

from __future__ import annotations

import argparse

from aide_ray.data.manifest import read_manifest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.eval.label_quality import noisy_label_dice
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="input manifest CSV")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.csv, labels/)")
    parser.add_argument("--protocol", required=True, choices=["pymic-jsrt", "limited"],
                        help="pymic-jsrt: dilate/erode/edge-distort labels; limited: keep a fraction labelled")
    parser.add_argument("--clean-fraction", type=float, default=0.05,
                        help="pymic-jsrt: share of train cases keeping clean labels (default 0.05)")
    parser.add_argument("--labelled-fraction", type=float, default=0.1,
                        help="limited: share of train cases keeping labels (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--reference-size", type=int, default=256,
                        help="image size at which iterations/radii are [6, 12] (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        out = corrupt_manifest(args.manifest, args.out, args.protocol, args.seed,
                               clean_fraction=args.clean_fraction, labelled_fraction=args.labelled_fraction,
                               reference_size=args.reference_size, overwrite=args.overwrite)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from e
    df = read_manifest(out)
    train = df[df["split"] == "train"]
    kinds = train["label_kind"].value_counts().sort_index()
    line = f"wrote {out} (train rows: " + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")"
    if args.protocol == "pymic-jsrt":
        dice = noisy_label_dice(train[train["label_kind"] == "lq"])
        if len(dice):
            line += f"; mean Dice of noisy vs clean labels {dice.mean():.3f}"
    print(line)
    return 0
