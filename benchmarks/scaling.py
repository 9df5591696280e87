"""How AIDE training scales with the number of Ray Train workers on a simulated multi-node cluster.

One ``ray.cluster_utils.Cluster`` (``_cluster.py``: its own Ray temp folder): a head with
2 CPUs (Ray Data, Train's controller, the split coordinators) and one "train" node per
worker of the largest run (1 CPU and the custom resource ``train_slot`` each), as the
multi-node tests lay it out. For each worker count N (``--workers``) one real run,
``run_training`` (``aide-ray train``), of AIDE with the label correction in every epoch
(``aide.supervised_epochs=0``, ``aide.update_every=1``), base width 8, batch 8 per
worker (weak scaling: N x 8 rows per step), one torch thread, on the demo data at 64 px,
no validation, each worker on a node of its own (``cluster.resources_per_worker={train_slot: 1}``).

Figures, over the epochs after the first (the first includes start-up):

- ``scaling_slices_per_s_<N>w``: the run's own ``slices_per_s`` column of metrics.csv
  (rows trained by all workers over rank 0's ``train_seconds``), and
  ``scaling_efficiency_<N>w`` = that / (N x the 1-worker figure), measured side by side;
- ``scaling_data_wait_seconds_<N>w``: the ``data_wait_seconds`` column (rank 0's time
  waiting for batches in an epoch), and its share of ``train_seconds``
  (``scaling_data_wait_fraction_<N>w``);
- ``label_store_round_trips_per_epoch_<N>w``: calls the label-store actor served
  (each a blocking ``ray.get`` of a worker), counted by the actor itself (a subclass of
  ``LabelStore`` that counts its outermost calls, put in place of the run's actor), over
  the whole run / epochs: the run's start-up calls (``reset``, every worker's first
  ``changes_since``) are spread over the epochs;
- ``ddp_step_sync_seconds_<N>w`` and ``ddp_allreduce_seconds_<N>w`` (N >= 2): from a
  second, small ``TorchTrainer`` on the same nodes whose workers build the same nets
  (DDP through ``prepare_model``) and time AIDE's training step on one batch with
  gradient synchronisation and without it (``no_sync``), alternated, after a barrier:
  the median synchronised step minus the slowest worker's median unsynchronised step is
  the all-reduce time a step exposes; and the bare ``all_reduce`` of buffers of the
  trained nets' gradient sizes (one DDP bucket each at this size), median.

On one 2-core machine every node shares the same two cores, so N >= 2 measures
contention as much as scaling; on a real cluster the nodes are separate machines. The
last line is ``scaling_efficiency=`` of the largest N. Run from the repository root:
``python benchmarks/scaling.py`` (or ``--quick``: 1 and 2 workers, 2 epochs, less data).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from _cluster import simulated_cluster  # first: Ray's environment

from aide_ray.labels.store import LabelStore

TRAIN_NODE = {"num_cpus": 1, "resources": {"train_slot": 1}}
HEAD = {"num_cpus": 2}


class CountingLabelStore(LabelStore):
    """The label store, counting the calls it serves: only outermost ones, one per round trip."""

    def __init__(self, *args, **kwargs) -> None:
        self._calls: dict[str, int] = {}
        self._depth = 1  # calls made while it starts are not round trips
        super().__init__(*args, **kwargs)
        self._depth = 0

    def call_counts(self) -> dict[str, int]:
        return dict(self._calls)


def _counted(name: str):
    method = getattr(LabelStore, name)

    def call(self, *args, **kwargs):
        self._depth += 1
        try:
            if self._depth == 1:
                self._calls[name] = self._calls.get(name, 0) + 1
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1

    call.__name__ = call.__qualname__ = name
    return call


for _name, _ in inspect.getmembers(LabelStore, inspect.isfunction):
    if not _name.startswith("_"):
        setattr(CountingLabelStore, _name, _counted(_name))

STORES: list = []  # the counting actors of the runs, kept alive to read their counts


def counting_store_actor(num_samples, label_slots, shape, snapshot_path, name=None, *, lifetime=None,
                         run_token=None, fail_at=None, resources=None):
    """Stands in for ``create_label_store_actor`` (same arguments): the store, counting, not restartable."""
    import ray

    options = {"num_cpus": 0, "max_restarts": 0, **({"resources": dict(resources)} if resources else {})}
    actor = ray.remote(CountingLabelStore).options(**options).remote(
        num_samples, label_slots, shape, None if snapshot_path is None else str(snapshot_path), run_token)
    STORES.append(actor)
    return actor


def ddp_probe(config: dict) -> None:
    """A Train worker: time AIDE's step with and without gradient synchronisation, and a bare all-reduce."""
    import contextlib
    import time

    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    from aide_ray.config import demo_config
    from aide_ray.data.shards import load_dataset_info, read_slices_local
    from aide_ray.engine.batches import to_batch
    from aide_ray.engine.step import make_optimizers, train_one_step
    from aide_ray.labels import LabelCache
    from aide_ray.methods.registry import create_method

    torch.set_num_threads(1)
    cfg = demo_config(config["overrides"])
    info = load_dataset_info(cfg.data.shards)
    method = create_method(cfg, int(info["shape"][0]))
    torch.manual_seed(cfg.seed)
    nets = {name: prepare_model(net) if name in method.trained_nets else net
            for name, net in method.build_nets().items()}
    optimizers, _ = make_optimizers(cfg.optim, nets, method.trained_nets)
    rank = ray.train.get_context().get_world_rank()
    rows = read_slices_local(cfg.data.shards, split="train")
    take = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    cache = LabelCache(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]))
    batch = to_batch({key: value[take] for key, value in rows.items()}, cache, method.label_slots,
                     torch.device("cpu"))

    def step(sync: bool) -> float:
        with contextlib.ExitStack() as stack:
            if not sync:
                for name in method.trained_nets:
                    stack.enter_context(nets[name].no_sync())
            dist.barrier()
            start = time.perf_counter()
            train_one_step(method, nets, optimizers, batch, 1)
            return time.perf_counter() - start

    warmup, steps = int(config["warmup"]), int(config["steps"])
    for _ in range(warmup):
        step(True)
    synced, local = [], []
    for _ in range(steps):
        synced.append(step(True))
        local.append(step(False))
    buffers = [torch.zeros(sum(p.numel() for p in nets[name].parameters() if p.requires_grad))
               for name in method.trained_nets]
    reduce = []
    for _ in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        for buffer in buffers:
            dist.all_reduce(buffer)
        reduce.append(time.perf_counter() - start)
    mine = {"synced": statistics.median(synced), "local": statistics.median(local),
            "allreduce": statistics.median(reduce[warmup:])}
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if rank == 0:  # Ray Train v2 keeps only metrics reported with a checkpoint; every node shares this disk
        Path(config["out"]).write_text(json.dumps({
            "step_synced_s": statistics.median(p["synced"] for p in every),
            "step_local_s": max(p["local"] for p in every), "allreduce_s": max(p["allreduce"] for p in every),
            "gradient_floats": sum(int(b.numel()) for b in buffers)}))


def run_ddp_probe(overrides: list[str], workers: int, storage: Path, warmup: int, steps: int) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    out = storage / f"ddp_probe_{workers}w.json"
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        ddp_probe, train_loop_config={"overrides": overrides, "warmup": warmup, "steps": steps, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1, "train_slot": 1}),
        run_config=ray.train.RunConfig(name=f"ddp_probe_{workers}w", storage_path=str(storage),
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")))
    trainer.fit()
    return json.loads(out.read_text())


def measure(workers: int, shards: Path, tmp: Path, args) -> dict:
    """One run with ``workers`` Train workers (and the DDP probe for two or more)."""
    import ray

    import aide_ray.distributed.trainer as trainer_module
    from aide_ray.config import demo_config

    overrides = [
        "method=aide", f"epochs={args.epochs}", f"workers={workers}", "cpus_per_worker=1",
        f"batch_size={args.batch_size}", f"model.base_width={args.base_width}", f"data.shards={shards}",
        "data.val_split=''", f"run.storage_path={tmp / 'runs'}", f"run.name=scaling_{workers}w",
        "cluster.resources_per_worker={train_slot: 1}", "aide.supervised_epochs=0", "aide.update_every=1",
    ]
    trainer_module.create_label_store_actor = counting_store_actor  # build_trainer looks it up per call
    history = trainer_module.run_training(demo_config(overrides)).history
    calls = ray.get(STORES[-1].call_counts.remote())
    STORES.clear()
    timed = history.iloc[1:]
    out = {"workers": workers, "epochs": len(history), "calls": calls,
           "slices_per_s": float(timed["slices_per_s"].mean()), "train_seconds": float(timed["train_seconds"].mean()),
           "data_wait_seconds": float(timed["data_wait_seconds"].mean()),
           "per_epoch": [(float(r.train_seconds), float(r.data_wait_seconds), float(r.slices_per_s))
                         for r in history.itertuples()]}
    out["round_trips_per_epoch"] = sum(calls.values()) / len(history)
    if workers >= 2:
        out["probe"] = run_ddp_probe(overrides, workers, tmp / "probe", args.probe_warmup, args.probe_steps)
    return out


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, 2 epochs, 24 cases, short probe")
    parser.add_argument("--workers", default=None, help="worker counts, comma-separated (default 1,2,4; quick 1,2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="per run; the first is not counted (default 3; quick 2)")
    parser.add_argument("--cases", type=int, default=None, help="demo cases (train split: 2/3; default 48, quick 24)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="per worker")
    parser.add_argument("--probe-warmup", type=int, default=None, help="DDP probe: untimed steps (default 3; quick 2)")
    parser.add_argument("--probe-steps", type=int, default=None, help="DDP probe: timed pairs (default 10; quick 4)")
    parser.add_argument("--data", default=None, help="folder to keep the demo data in (default: a temp folder)")
    args = parser.parse_args(argv)
    quick = args.quick
    workers = sorted({int(w) for w in (args.workers or ("1,2" if quick else "1,2,4")).split(",")})
    args.epochs = args.epochs or (2 if quick else 3)
    args.probe_warmup = args.probe_warmup or (2 if quick else 3)
    args.probe_steps = args.probe_steps or (4 if quick else 10)
    cases = args.cases or (24 if quick else 48)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is start-up), got {args.epochs}")

    from _common import prepare_shards

    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-bench-"))
    results = {}
    try:
        shards = prepare_shards(Path(args.data) if args.data else tmp / "data", cases, args.slices, args.size)
        with simulated_cluster([HEAD] + [TRAIN_NODE] * max(workers)):
            for n in workers:
                results[n] = r = measure(n, shards, tmp, args)
                print(f"{n} worker(s): epochs (train s, data wait s, slices/s): "
                      + ", ".join(f"({t:.2f}, {w:.2f}, {s:.1f})" for t, w, s in r["per_epoch"])
                      + f"; label-store calls {dict(sorted(r['calls'].items()))}", flush=True)
                if "probe" in r:
                    p = r["probe"]
                    print(f"  DDP probe: step {p['step_synced_s']:.4f} s synchronised, {p['step_local_s']:.4f} s "
                          f"without (slowest worker); all-reduce of {int(p['gradient_floats'])} floats "
                          f"{p['allreduce_s']:.5f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results[workers[0]]["slices_per_s"] / workers[0]  # per worker, at the smallest count
    for n, r in results.items():
        print(f"scaling_slices_per_s_{n}w={r['slices_per_s']:.2f}")
        print(f"scaling_efficiency_{n}w={r['slices_per_s'] / (n * base):.3f}")
        print(f"scaling_data_wait_seconds_{n}w={r['data_wait_seconds']:.3f}")
        print(f"scaling_data_wait_fraction_{n}w={r['data_wait_seconds'] / r['train_seconds']:.4f}")
        print(f"label_store_round_trips_per_epoch_{n}w={r['round_trips_per_epoch']:.1f}")
        if "probe" in r:
            print(f"ddp_step_sync_seconds_{n}w={r['probe']['step_synced_s'] - r['probe']['step_local_s']:.4f}")
            print(f"ddp_allreduce_seconds_{n}w={r['probe']['allreduce_s']:.5f}")
    efficiency = results[workers[-1]]["slices_per_s"] / (workers[-1] * base)
    print(f"scaling_efficiency={efficiency:.3f}")
    return efficiency


if __name__ == "__main__":
    main()
