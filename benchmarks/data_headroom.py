"""Headroom of the Ray Data training pipeline over what one AIDE trainer consumes.

Producer: the ``train`` dataset of :func:`aide_ray.distributed.data_pipeline.build_datasets`
(Parquet read of the train split and decode, cached once in the object store when
it fits, then per pass block reordering and random flips; the exact pipeline a
training run streams; ``--pipeline streaming`` measures the fallback for data that
does not fit), iterated fully with ``iter_batches`` as the worker loop does (numpy
batches of 8, the same prefetch and local shuffle buffer: ``iter_options``) for several epochs; slices/s
over the epochs after the first (the first includes Ray Data's start-up) and
also over all of them.

Consumer: :func:`aide_ray.engine.step.train_one_step` for AIDE (base width 8,
64 x 64 slices, batch 8, one torch thread) on the local backend's batches held in memory;
slices/s over timed steps after warm-up steps.

The two are measured one after the other (a training run overlaps them), so
the ratio says how many trainers of this size one such pipeline could feed
without the trainer waiting for data. Target: ratio >= 3. Run from the
repository root: ``python benchmarks/data_headroom.py``; the last line is
``data_headroom_ratio=VALUE``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import init_ray, prepare_shards


def pipeline_epochs(shards: Path, batch_size: int, epochs: int,
                    cache: bool | None) -> tuple[float, list[tuple[int, float]], list[int]]:
    """Seconds to build the pipeline (the one-off decode when cached), (slices, seconds) of each
    full pass over it, and per pass after the first, how many of its batches hold exactly the
    rows of a batch of the previous pass (a check on shuffling)."""
    from aide_ray.data.shards import load_dataset_info
    from aide_ray.distributed.data_pipeline import build_datasets, iter_options, use_cache

    info = load_dataset_info(shards)
    rows = {"train_split": "train", "val_split": "", "labelled_only": True, "unlabelled_fraction": 0.5}
    cache = use_cache(info, **rows) if cache is None else cache
    start = time.perf_counter()
    train = build_datasets(str(shards), **rows, flip=True, max_retries=2, info=info, cache=cache)["train"]
    build = time.perf_counter() - start
    options = iter_options(batch_size, train=True, shuffle=True, streaming=not cache)  # as the workers iterate
    out, repeated = [], []
    previous: set[frozenset[int]] = set()
    for _ in range(epochs):
        start = time.perf_counter()
        rows = 0
        seen = set()
        for batch in train.iter_batches(**options):
            rows += len(batch["sample_index"])
            seen.add(frozenset(batch["sample_index"].tolist()))
        out.append((rows, time.perf_counter() - start))
        if previous:
            repeated.append(len(seen & previous))
        previous = seen
    return build, out, repeated


def trainer_rate(shards: Path, base_width: int, batch_size: int, warmup: int, steps: int) -> float:
    """Slices/s of AIDE's training step on the local backend's in-memory batches of the train split."""
    from aide_ray.config import demo_config
    from aide_ray.engine.batches import to_batch
    from aide_ray.engine.local import LocalBackend
    from aide_ray.engine.run_setup import prepare_run
    from aide_ray.engine.step import make_optimizers, train_one_step
    from aide_ray.labels import LabelCache, LabelStore
    from aide_ray.methods.registry import create_method

    cfg = demo_config(["method=aide", f"model.base_width={base_width}", f"batch_size={batch_size}",
                       f"data.shards={shards}", f"run.storage_path={shards.parent}", "run.name=headroom"])
    setup = prepare_run(cfg)
    info = setup.info
    method = create_method(cfg, int(info["shape"][0]))
    store = LabelStore(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]))
    backend = LocalBackend(setup, store)
    cache = LabelCache(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]))
    torch.manual_seed(0)
    nets = method.build_nets()
    optimizers, _ = make_optimizers(cfg.optim, nets, method.trained_nets)

    def batches():
        epoch = 0
        while True:
            yield from backend.batches("train", batch_size, epoch=epoch)
            epoch += 1

    source = batches()
    for _ in range(warmup):
        train_one_step(method, nets, optimizers, to_batch(next(source), cache, method.label_slots, backend.device), 1)
    start = time.perf_counter()
    for _ in range(steps):
        train_one_step(method, nets, optimizers, to_batch(next(source), cache, method.label_slots, backend.device), 1)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=48, help="demo cases (train split: 2/3 of them)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4, help="pipeline passes; the first is not counted")
    parser.add_argument("--warmup", type=int, default=2, help="untimed trainer steps")
    parser.add_argument("--steps", type=int, default=12, help="timed trainer steps")
    parser.add_argument("--pipeline", choices=["auto", "cached", "streaming"], default="auto",
                        help="auto: what a training run does (cache decoded rows when they fit the object store)")
    parser.add_argument("--data", default=None, help="folder to keep the demo data in (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first pass is start-up), got {args.epochs}")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-bench-"))
    try:
        shards = prepare_shards(Path(args.data) if args.data else tmp / "data", args.cases, args.slices, args.size)
        init_ray()  # workers get OMP_NUM_THREADS=1 (aide_ray.distributed.runtime.WORKER_ENV)
        try:
            cache = {"auto": None, "cached": True, "streaming": False}[args.pipeline]
            build, passes, repeated = pipeline_epochs(shards, args.batch_size, args.epochs, cache)
        finally:
            ray.shutdown()
        print(f"pipeline built in {build:.2f} s ({args.pipeline}; includes the one-off decode when cached)",
              flush=True)
        for i, (rows, seconds) in enumerate(passes):
            print(f"pipeline pass {i}: {rows} slices in {seconds:.2f} s ({rows / seconds:.1f} slices/s)", flush=True)
        batches = passes[0][0] // args.batch_size
        print(f"batches repeating a batch of the previous pass: {', '.join(f'{r}/{batches}' for r in repeated)}",
              flush=True)
        consume = trainer_rate(shards, args.base_width, args.batch_size, args.warmup, args.steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    steady = passes[1:]
    produce = sum(r for r, _ in steady) / sum(s for _, s in steady)
    overall = sum(r for r, _ in passes) / sum(s for _, s in passes)
    ratio = produce / consume
    print(f"Ray Data train pipeline: {produce:.1f} slices/s after the first pass ({overall:.1f} incl. the first, "
          f"median pass {statistics.median(s for _, s in steady):.2f} s) | AIDE trainer (1 thread): "
          f"{consume:.1f} slices/s | target ratio >= 3")
    print(f"data_headroom_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
