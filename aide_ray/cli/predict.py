"""`aide-ray predict`: segment images with a trained checkpoint, in the input's geometry."""

from __future__ import annotations

import argparse

from aide_ray.exceptions import InputError
from aide_ray.inference.predictor import PredictOptions, predict

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_CKPT",
                        help="checkpoint folder, or a run folder (its best checkpoint)")
    parser.add_argument("--input", required=True, metavar="MANIFEST.csv|FOLDER",
                        help="manifest CSV (one case per case_id) or a folder of images (case_id = file stem)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder of <case_id>.nii.gz / .png")
    parser.add_argument("--net", default="ensemble", choices=["ensemble", "1", "2"],
                        help="mean softmax of the eval nets (default), or only the first / second")
    parser.add_argument("--tta", default="none", choices=["none", "flip"],
                        help="test-time augmentation: flip averages identity, horizontal and vertical flips")
    parser.add_argument("--lcc", action="store_true", default=None,
                        help="keep each class's largest connected component "
                             "(default: the run's eval.largest_component)")
    parser.add_argument("--fill-holes", action="store_true", default=None,
                        help="fill holes enclosed by a class (default: the run's eval.fill_holes)")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"],
                        help="with a manifest: only this split (default: every case)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default: 16)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ray", dest="use_ray", action="store_true", default=None,
                      help="run on Ray Data even for one case")
    mode.add_argument("--local", dest="use_ray", action="store_false",
                      help="run in this process even for many cases")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors holding the model (default: 2)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0,
                        help="GPUs per Ray actor; > 0 predicts on CUDA (default: 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="device of in-process prediction (default: CUDA when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.actors < 1:
        raise InputError(f"actors must be >= 1, got {args.actors}")
    pool = None
    if args.use_ray is not False:
        # Ray is imported only when the cases may go to the actor pool (--local never needs it).
        from aide_ray.distributed.predict_pool import RayCasePool  # noqa: PLC0415  (imports Ray)

        pool = RayCasePool(actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    # Flags not given (None): the run's own post-processing settings (cfg.eval).
    options = PredictOptions(net=args.net, tta=args.tta, largest_component=args.lcc, fill_holes=args.fill_holes,
                             batch_size=args.batch_size, device=args.device)
    # --ray: always the pool; --local: this process; neither: the pool for more than one case.
    files = predict(args.checkpoint, args.input, args.out, options=options, split=args.split, pool=pool,
                    use_pool=args.use_ray, overwrite=args.overwrite)
    print(f"{len(files)} prediction(s) written to {args.out}")
    return 0
