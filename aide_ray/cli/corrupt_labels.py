"""`aide-ray corrupt-labels MANIFEST --out DIR --protocol ...`: simulate noisy, limited or scribble train labels."""

from __future__ import annotations

import argparse

from aide_ray.data.image_io import read_image, scribble_array
from aide_ray.data.label_kinds import SCRIBBLE
from aide_ray.data.manifest import read_manifest
from aide_ray.data.noise import PROTOCOLS, SCRIBBLES, NoiseOptions, ScribbleOptions, corrupt_manifest
from aide_ray.data.scribbles import annotated_fraction
from aide_ray.eval.label_quality import noisy_label_dice
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "add_noise_arguments", "noise_options", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="input manifest CSV")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.csv, labels/)")
    parser.add_argument("--protocol", required=True, choices=list(PROTOCOLS),
                        help="pymic-jsrt(-strong): random dilate/erode/edge-distort; over-seg, under-seg, shifted: "
                             "a systematic annotator; mixed-over-seg: a share of the cases over-segmented by a "
                             "careless second annotator; missed-structure: a structure left out in a share of the "
                             "cases; limited: keep a fraction labelled; scribbles: train labels become "
                             "scribbles drawn from the masks (docs/data.md)")
    parser.add_argument("--clean-fraction", type=float, default=0.05,
                        help="noise protocols: share of train cases keeping clean labels (default 0.05)")
    add_noise_arguments(parser)
    parser.add_argument("--scribble-width", type=float, default=ScribbleOptions.width,
                        help="scribbles: stroke width in pixels at --reference-size (default 3)")
    parser.add_argument("--scribble-keep", type=float, default=ScribbleOptions.keep_fraction,
                        help="scribbles: share of each skeleton or background ring a stroke follows (default 0.8)")
    parser.add_argument("--scribble-distance", type=float, default=ScribbleOptions.background_distance,
                        help="scribbles: distance of the background stroke from the foreground, pixels at "
                             "--reference-size (default 8)")
    parser.add_argument("--scribble-border", type=float, default=ScribbleOptions.border_distance,
                        help="scribbles: distance of the outside background stroke from the image border, pixels "
                             "at --reference-size (default 8)")
    parser.add_argument("--labelled-fraction", type=float, default=0.1,
                        help="limited: share of train cases keeping labels (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--reference-size", type=int, default=256,
                        help="image size at which radii and magnitudes are given (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs of the noise protocols (:class:`NoiseOptions`), shared with `aide-ray demo-data`."""
    parser.add_argument("--magnitude", type=float, default=NoiseOptions.magnitude,
                        help="over-seg, under-seg, shifted, mixed-over-seg: pixels at the reference size, 256 px "
                             "unless --reference-size says otherwise (default 8)")
    parser.add_argument("--affected-fraction", type=float, default=NoiseOptions.affected_fraction,
                        help="missed-structure, mixed-over-seg: share of the noisy cases affected (default 0.5)")
    parser.add_argument("--strength", type=float, default=NoiseOptions.strength,
                        help="pymic-jsrt-strong: factor on pymic-jsrt's radii (default 2)")


def noise_options(args: argparse.Namespace) -> NoiseOptions:
    """The :class:`NoiseOptions` of :func:`add_noise_arguments`' arguments (ValueError when out of range)."""
    return NoiseOptions(magnitude=args.magnitude, affected_fraction=args.affected_fraction, strength=args.strength)


def run(args: argparse.Namespace) -> int:
    try:
        options = noise_options(args)
        scribble_options = ScribbleOptions(width=args.scribble_width, keep_fraction=args.scribble_keep,
                                           background_distance=args.scribble_distance,
                                           border_distance=args.scribble_border)
        out = corrupt_manifest(args.manifest, args.out, args.protocol, args.seed,
                               clean_fraction=args.clean_fraction, labelled_fraction=args.labelled_fraction,
                               reference_size=args.reference_size, options=options,
                               scribble_options=scribble_options, overwrite=args.overwrite)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from e
    df = read_manifest(out)
    train = df[df["split"] == "train"]
    kinds = train["label_kind"].value_counts().sort_index()
    line = f"wrote {out} (train rows: " + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")"
    if args.protocol == SCRIBBLES:
        scribbles = train[train["label_kind"] == SCRIBBLE]["label"]
        shares = [annotated_fraction(scribble_array(read_image(path), path)) for path in scribbles]
        if shares:
            line += f"; scribbles annotate {100 * sum(shares) / len(shares):.1f}% of the pixels (mean over cases)"
    elif args.protocol != "limited":
        dice = noisy_label_dice(train[train["label_kind"] == "lq"])
        if len(dice):
            line += f"; mean Dice of noisy vs clean labels {dice.mean():.3f}"
    print(line)
    return 0
