"""Overhead of Ray Train over a plain PyTorch loop for one AIDE training epoch.

Both sides train AIDE (base width 8, batch 8, 64 x 64 slices, one torch
thread) on the same ingested demo data (48 cases x 8 slices; the 256 slices of
the train split, 32 steps per epoch), with the same step function
(:func:`aide_ray.engine.step.train_one_step`):

- Ray: ``aide-ray train``'s engine (:func:`aide_ray.engine.train.run_training`)
  with one Ray Train worker; rows stream through Ray Data (Parquet read,
  decode, flip augment) and the label store's corrections are overlaid per
  batch. The figure is the per-epoch ``train_seconds`` the loop reports (the
  training pass only: no scoring, validation or checkpoint), averaged over the
  epochs after the first (which includes start-up).
- Plain: the reference loop's helpers (:func:`aide_ray.engine.loop.iterate_batches`,
  :func:`aide_ray.engine.loop.make_batch`) on the same rows decoded once into
  memory, the same number of steps per epoch, random horizontal flips; timed
  per epoch, averaged over the same epochs. The plain side runs before and
  after the Ray run and both are averaged, so that a change in machine load
  during the benchmark affects both sides alike.

On a shared machine the two sides must also compete for the cores alike.
Linux's autogroup scheduler shares CPU time between sessions, and Ray's
processes (the Train worker and the Ray Data tasks) run in the Ray node's
session with the niceness Ray gives its workers, while the benchmark's own
process shares the caller's session with everything else started from it.
So by default the plain loop runs inside a 1-CPU Ray task: a process exactly
like the Train worker, which calls no Ray API (``--plain-in process`` runs it
in this process instead).

Target: ratio <= 1.15. Run from the repository root:
``python benchmarks/ray_overhead.py``; the last line is ``ray_overhead_ratio=VALUE``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import init_ray, prepare_shards


def plain_epochs(cfg, shards: Path, epochs: int, seed: int) -> list[float]:
    """Seconds of each plain-PyTorch training epoch over the train split (decoded once, in memory)."""
    torch.set_num_threads(1)
    from aide_ray.data.shards import read_slices_local
    from aide_ray.engine.loop import iterate_batches, make_batch
    from aide_ray.engine.step import make_optimizers, train_one_step
    from aide_ray.methods.registry import method_class

    rows = read_slices_local(shards, split=cfg.data.train_split)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    method = method_class(cfg.method)(cfg, in_channels=rows["image"].shape[1])
    nets = method.build_nets()
    optimizers, schedulers = make_optimizers(cfg, nets, method.trained_nets)
    labels = np.repeat(rows["label"][:, None], method.label_slots, axis=1)
    train_rows = np.flatnonzero(rows["has_label"])
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for index in iterate_batches(rng.permutation(train_rows), cfg.batch_size):
            flip = rng.random(len(index)) < 0.5
            batch = make_batch(rows["image"], labels, rows["has_label"], rows["hq"], index, flip=flip)
            train_one_step(method, nets, optimizers, batch, epoch)
        for sched in schedulers.values():
            sched.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=48, help="demo cases (train split: 2/3 of them)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is not timed")
    parser.add_argument("--plain-in", default="ray-task", choices=["ray-task", "process"],
                        help="where the plain loop runs (see the module docstring)")
    parser.add_argument("--data", default=None, help="folder to keep the demo data in (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is start-up), got {args.epochs}")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from aide_ray.config import demo_config
    from aide_ray.engine.train import run_training

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
        init_ray({"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"})
        try:
            if args.plain_in == "ray-task":
                plain = ray.remote(num_cpus=1, max_retries=0)(plain_epochs)
                run_plain = lambda seed: ray.get(plain.remote(cfg, shards, args.epochs, seed))  # noqa: E731
            else:
                run_plain = lambda seed: plain_epochs(cfg, shards, args.epochs, seed)  # noqa: E731
            before = run_plain(cfg.seed)[timed]
            print(f"plain epochs (before Ray): {', '.join(f'{s:.2f}' for s in before)} s", flush=True)
            history = run_training(cfg).history
            ray_s = [float(v) for v in history["train_seconds"]][timed]
            slices = int(round(float(history["slices_per_s"].iloc[-1] * history["train_seconds"].iloc[-1])))
            print(f"Ray epochs (train_seconds): {', '.join(f'{s:.2f}' for s in ray_s)} s "
                  f"({slices} slices per epoch), of which waiting for data: "
                  f"{', '.join(f'{float(s):.2f}' for s in history['data_wait_seconds'].iloc[timed])} s", flush=True)
            after = run_plain(cfg.seed + 1)[timed]
            print(f"plain epochs (after Ray):  {', '.join(f'{s:.2f}' for s in after)} s", flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = statistics.mean(before + after)
    ray_mean = statistics.mean(ray_s)
    ratio = ray_mean / plain
    print(f"plain PyTorch epoch: {plain:.2f} s | Ray Train (1 worker) epoch: {ray_mean:.2f} s | "
          f"target ratio <= 1.15")
    print(f"ray_overhead_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
