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
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from _common import init_ray, prepare_shards


def plain_epochs(cfg, seed: int) -> list[float]:
    """``train_seconds`` of each epoch of the local backend (rows decoded once, in memory)."""
    torch.set_num_threads(1)
    from aide_ray.engine.local import train_local

    run = cfg.replace(seed=seed, **{"run.name": f"local_{seed}"})
    return [float(v) for v in train_local(run).history["train_seconds"]]


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=48, help="demo cases (train split: 2/3 of them)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is not timed")
    parser.add_argument("--plain-in", default="ray-task", choices=["ray-task", "process"],
                        help="where the local backend runs (see the module docstring)")
    parser.add_argument("--data", default=None, help="folder to keep the demo data in (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is start-up), got {args.epochs}")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from aide_ray.config import demo_config
    from aide_ray.distributed.trainer import run_training

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-bench-"))
    try:
        shards = prepare_shards(Path(args.data) if args.data else tmp / "data", args.cases, args.slices, args.size)
        cfg = demo_config([
            "method=aide", f"epochs={args.epochs}", "workers=1", "cpus_per_worker=1",
            f"batch_size={args.batch_size}", f"model.base_width={args.base_width}", f"data.shards={shards}",
            "data.val_split=''", f"run.storage_path={tmp / 'runs'}", "run.name=ray_overhead",
        ])
        timed = slice(1, None)
        init_ray()  # workers get OMP_NUM_THREADS=1 (aide_ray.distributed.runtime.WORKER_ENV)
        try:
            if args.plain_in == "ray-task":
                plain = ray.remote(num_cpus=1, max_retries=0)(plain_epochs)
                run_plain = lambda seed: ray.get(plain.remote(cfg, seed))  # noqa: E731
            else:
                run_plain = lambda seed: plain_epochs(cfg, seed)  # noqa: E731
            before = run_plain(cfg.seed)[timed]
            print(f"local epochs (before Ray): {', '.join(f'{s:.2f}' for s in before)} s", flush=True)
            history = run_training(cfg).history
            ray_s = [float(v) for v in history["train_seconds"]][timed]
            slices = int(round(float(history["slices_per_s"].iloc[-1] * history["train_seconds"].iloc[-1])))
            print(f"Ray epochs (train_seconds): {', '.join(f'{s:.2f}' for s in ray_s)} s "
                  f"({slices} slices per epoch), of which waiting for data: "
                  f"{', '.join(f'{float(s):.2f}' for s in history['data_wait_seconds'].iloc[timed])} s", flush=True)
            after = run_plain(cfg.seed + 1)[timed]
            print(f"local epochs (after Ray):  {', '.join(f'{s:.2f}' for s in after)} s", flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = statistics.mean(before + after)
    ray_mean = statistics.mean(ray_s)
    ratio = ray_mean / plain
    print(f"local backend epoch: {plain:.2f} s | Ray backend (1 worker) epoch: {ray_mean:.2f} s | "
          f"target ratio <= 1.15")
    print(f"ray_overhead_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
