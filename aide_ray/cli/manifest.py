"""`aide-ray manifest LAYOUT_DIR --out manifest.csv`: a manifest from an nnU-Net, Decathlon or pairs folder."""

from __future__ import annotations

import argparse
import sys
import warnings

from aide_ray.data.layout_readers import FORMATS
from aide_ray.data.layouts import LayoutManifest, LayoutOptions, write_layout_manifest

__all__ = ["add_arguments", "run", "describe", "write_and_report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("layout", metavar="LAYOUT_DIR",
                        help="nnU-Net v2 raw dataset, Decathlon task, or folder of images/ + masks/ (docs/data.md)")
    parser.add_argument("--out", required=True, metavar="MANIFEST.csv", help="manifest CSV to write")
    parser.add_argument("--format", choices=["auto", *FORMATS], default="auto",
                        help="layout of LAYOUT_DIR (default: auto, from dataset.json or the folder names)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the labelled training cases for val (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="share of the labelled training cases for test (default 0; imagesTs is always test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    parser.add_argument("--label-kind", choices=["hq", "lq", "scribble"], default="hq",
                        help="kind of every label (default hq); scribble: the labels are scribbles, class indices "
                             "where annotated and 255 elsewhere (docs/data.md)")
    parser.add_argument("--masks", metavar="DIR",
                        help="with --label-kind scribble: full masks named like the labels; val and test rows take "
                             "them as their label (kind hq), train rows as clean_label")
    parser.add_argument("--allow-unlabelled", action="store_true",
                        help="keep training images without a label as unlabelled train cases (kind none)")
    parser.add_argument("--skip-label-check", action="store_true",
                        help="do not read the labels to check their values against dataset.json's classes")
    parser.add_argument("--overwrite", action="store_true", help="replace MANIFEST.csv if it exists")


def describe(result: LayoutManifest, out) -> str:
    """One line: what was written, the channels and classes, and the cases per split."""
    counts = result.table["split"].value_counts()
    splits = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in ("train", "val", "test"))
    classes = ", ".join(f"{k} {n}" for k, n in sorted(result.classes.items())) or "from the masks"
    line = (f"wrote {out} ({result.format}; channels: {', '.join(result.channel_names)}; classes: {classes}): "
            f"cases {splits}")
    table = result.table
    if (table["label_kind"] == "scribble").any():  # say which rows are scribbles and which full masks
        kinds = table[table["label_kind"] != "none"].groupby(["split", "label_kind"]).size()
        line += "; labels: " + ", ".join(f"{s} {k} {int(kinds[(s, k)])}" for s in ("train", "val", "test")
                                         for k in ("scribble", "hq") if (s, k) in kinds.index)
    return line


def write_and_report(layout, out, fmt: str, options: LayoutOptions, *, overwrite: bool) -> LayoutManifest:
    """Write the manifest; print the library's warnings as one line each on stderr, then the summary line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = write_layout_manifest(layout, out, fmt, options, overwrite=overwrite)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(describe(result, out))
    return result


def run(args: argparse.Namespace) -> int:
    options = LayoutOptions(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                            label_kind=args.label_kind, allow_unlabelled=args.allow_unlabelled,
                            check_labels=not args.skip_label_check, masks=args.masks)
    write_and_report(args.layout, args.out, args.format, options, overwrite=args.overwrite)
    return 0
