"""`aide-ray demo-data OUT_DIR`: write the synthetic demo dataset."""

from __future__ import annotations

import argparse

from aide_ray.cli.corrupt_labels import add_noise_arguments, noise_options
from aide_ray.data.demo import make_demo_data
from aide_ray.data.manifest import read_manifest
from aide_ray.data.mask_noise import MASK_PROTOCOLS
from aide_ray.exceptions import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--cases", type=int, default=12, help="number of cases, split 8/2/2 of 12 (default 12)")
    parser.add_argument("--slices", type=int, default=8, help="slices per volume (default 8)")
    parser.add_argument("--size", type=int, default=64, help="in-plane size in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--protocol", default="pymic-jsrt", choices=MASK_PROTOCOLS,
                        help="noise of the train labels (default pymic-jsrt, the one `make demo` uses)")
    add_noise_arguments(parser)  # sizes at 256 px, scaled to --size
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        noise = noise_options(args)
        manifest = make_demo_data(args.out_dir, cases=args.cases, slices=args.slices, size=args.size,
                                  seed=args.seed, protocol=args.protocol, noise=noise, overwrite=args.overwrite)
    except ValueError as e:
        raise InputError(str(e)) from e
    df = read_manifest(manifest)
    kinds = df.groupby(["split", "label_kind"]).size()
    print(f"wrote {manifest} ({len(df)} cases: "
          + ", ".join(f"{s}/{k} {n}" for (s, k), n in kinds.items()) + ")")
    return 0
