"""Overhead of the Ray backend over the local backend for one AIDE training epoch.

Both sides run the one training loop (:func:`aide_ray.engine.loop.train_loop`)
with AIDE (base width 8, batch 8, 64 x 64 slices, one torch thread) on the same
ingested demo data (48 cases x 8 slices; the 256 slices of the train split, 32
steps per epoch):

- Ray: ``aide-ray train`` (:func:`aide_ray.distributed.trainer.run_training`)
  with one Ray Train worker; rows stream through Ray Data (Parquet read,
  decode, flip augment) and the label store is an actor.
- Local: ``aide-ray train --backend local`` (:func:`aide_ray.engine.local.train_local`):
  the rows decoded once into memory, the label store in process.

The figure of each side is the per-epoch ``train_seconds`` the loop reports
(the training pass only: no scoring, validation or checkpoint), averaged over
the epochs after the first (which includes start-up). The local side runs
before and after the Ray run and both are averaged, so that a change in
machine load during the benchmark affects both sides alike.

On a shared machine the two sides must also compete for the cores alike.
Ray's worker processes (the Train worker and the Ray Data tasks) lower their own
priority to Ray's ``worker_niceness`` (nice 15 by default; an embedded Ray of
:func:`aide_ray.distributed.runtime.init_ray` sets 0), and they run in the
driver's session, so Linux's autogroup scheduler weighs them against the
benchmark's own process by niceness (docs/performance.md, "Start-up"). So by
default the local backend runs inside a 1-CPU Ray task: a process exactly like
the Train worker, which calls no Ray API (``--plain-in process`` runs it in this
process instead).

Target: ratio <= 1.15. Run from the repository root:
``python benchmarks/ray_overhead.py``; the last line is ``ray_overhead_ratio=VALUE``.

Real data (``--shards DIR``: shards made by ``aide-ray ingest``; or ``--ingest-from
DATASET --size N``: setting 1's noisy Shenzhen training set made as the experiments
make it, kept under ``--data``). The setting of issue 16 (supervised, 128 px, base
width 16, batch 8, 2 torch threads, no flips; 396 train slices)::

    python benchmarks/ray_overhead.py --ingest-from ../shared/data/shenzhen_cxr_lungs \
        --size 128 --data runs/bench_shenzhen128 --method supervised --base-width 16 \
        --threads 2 --no-augment

``--threads`` is ``cpus_per_worker`` (the Train worker's CPUs and torch threads; the
plain side's Ray task takes as many CPUs). In this mode the figures are throughputs:
``plain_slices_per_s_real``, ``ray_slices_per_s_real`` (slices of an epoch / its
``train_seconds``, mean over the timed epochs) and last
``ray_overhead_ratio_real=VALUE``: Ray slices/s over plain slices/s (plain epoch
seconds over Ray epoch seconds), target >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from _common import init_ray, prepare_shards, prepare_shenzhen_shards


def plain_epochs(cfg, seed: int) -> tuple[list[float], int]:
    """``train_seconds`` of each epoch of the local backend (rows decoded once, in memory), and slices per epoch."""
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    from aide_ray.engine.local import train_local

    run = cfg.replace(seed=seed, **{"run.name": f"local_{seed}"})
    return epochs_and_slices(train_local(run).history)


def epochs_and_slices(history) -> tuple[list[float], int]:
    """A run's per-epoch ``train_seconds`` and the slices of its last epoch."""
    slices = int(round(float(history["slices_per_s"].iloc[-1] * history["train_seconds"].iloc[-1])))
    return [float(v) for v in history["train_seconds"]], slices


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=48, help="demo cases (train split: 2/3 of them)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="slice size of the demo data or of --ingest-from")
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is not timed")
    parser.add_argument("--plain-in", default="ray-task", choices=["ray-task", "process"],
                        help="where the local backend runs (see the module docstring)")
    parser.add_argument("--data", default=None,
                        help="folder to keep the demo data (or --ingest-from's shards) in (default: a temp folder)")
    parser.add_argument("--shards", default=None, metavar="DIR",
                        help="real data: existing Parquet shards (aide-ray ingest) instead of demo data")
    parser.add_argument("--ingest-from", default=None, metavar="DATASET",
                        help="real data: a Shenzhen folder (images/, masks/); setting 1's noisy training set is "
                             "made from it at --size px (as the experiments make it) under --data, reused")
    parser.add_argument("--threads", type=int, default=1, help="torch threads = cpus_per_worker of each side")
    parser.add_argument("--method", default="aide", help="training method (default aide)")
    parser.add_argument("--no-augment", action="store_true", help="no random flips (data.flip_augment=false)")
    parser.add_argument("--light-decoder", action="store_true",
                        help="the U-Net with PyMIC's light up-stages (model.light_decoder=true)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is start-up), got {args.epochs}")
    if args.shards and args.ingest_from:
        parser.error("give --shards or --ingest-from, not both")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    real = bool(args.shards or args.ingest_from)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from aide_ray.config import demo_config
    from aide_ray.distributed.trainer import run_training

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-bench-"))
    try:
        data = Path(args.data).resolve() if args.data else tmp / "data"
        if args.shards:
            shards = Path(args.shards).resolve()
        elif args.ingest_from:
            shards = prepare_shenzhen_shards(Path(args.ingest_from), data, args.size)
        else:
            shards = prepare_shards(data, args.cases, args.slices, args.size)
        cfg = demo_config([
            f"method={args.method}", f"epochs={args.epochs}", "workers=1", f"cpus_per_worker={args.threads}",
            f"batch_size={args.batch_size}", f"model.base_width={args.base_width}", f"data.shards={shards}",
            "data.val_split=''", f"run.storage_path={tmp / 'runs'}", "run.name=ray_overhead",
            *(["data.flip_augment=false"] if args.no_augment else []),
            *(["model.light_decoder=true"] if args.light_decoder else []),
        ])
        timed = slice(1, None)
        init_ray()  # workers get OMP_NUM_THREADS=1 (aide_ray.distributed.runtime.WORKER_ENV); torch threads are set
        try:
            if args.plain_in == "ray-task":
                plain = ray.remote(num_cpus=args.threads, max_retries=0)(plain_epochs)
                run_plain = lambda seed: ray.get(plain.remote(cfg, seed))  # noqa: E731
            else:
                run_plain = lambda seed: plain_epochs(cfg, seed)  # noqa: E731
            before, plain_slices = run_plain(cfg.seed)
            before = before[timed]
            print(f"local epochs (before Ray): {', '.join(f'{s:.2f}' for s in before)} s", flush=True)
            history = run_training(cfg).history
            ray_s, slices = epochs_and_slices(history)
            ray_s = ray_s[timed]
            print(f"Ray epochs (train_seconds): {', '.join(f'{s:.2f}' for s in ray_s)} s "
                  f"({slices} slices per epoch), of which waiting for data: "
                  f"{', '.join(f'{float(s):.2f}' for s in history['data_wait_seconds'].iloc[timed])} s", flush=True)
            after = run_plain(cfg.seed + 1)[0][timed]
            print(f"local epochs (after Ray):  {', '.join(f'{s:.2f}' for s in after)} s", flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = statistics.mean(before + after)
    ray_mean = statistics.mean(ray_s)
    if real:
        return report_real(plain, plain_slices, ray_mean, slices)
    ratio = ray_mean / plain
    print(f"local backend epoch: {plain:.2f} s | Ray backend (1 worker) epoch: {ray_mean:.2f} s | "
          f"target ratio <= 1.15")
    print(f"ray_overhead_ratio={ratio:.3f}")
    return ratio


def report_real(plain_s: float, plain_slices: int, ray_s: float, ray_slices: int) -> float:
    """Print the real-data figures (throughputs, Ray over plain last) and return that ratio."""
    plain_rate, ray_rate = plain_slices / plain_s, ray_slices / ray_s
    ratio = ray_rate / plain_rate
    print(f"local backend epoch: {plain_s:.2f} s ({plain_slices} slices) | Ray backend (1 worker) epoch: "
          f"{ray_s:.2f} s ({ray_slices} slices) | target Ray slices/s >= 0.9 x local")
    print(f"plain_slices_per_s_real={plain_rate:.2f}")
    print(f"ray_slices_per_s_real={ray_rate:.2f}")
    print(f"ray_overhead_ratio_real={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
