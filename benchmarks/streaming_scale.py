"""Ray Data's streaming pipeline on data ten times the decoded-row cache, on a simulated cluster.

The engine caches the decoded training rows in the object store only when they take at
most a quarter of it (``aide_ray.distributed.data_pipeline.CACHE_SHARE_OF_OBJECT_STORE``);
larger data streams from Parquet every epoch. This benchmark makes data at least
``--multiple`` (10) times that limit and measures the streaming path at steady state.

Data: the demo dataset (``--base-cases`` cases of ``--slices`` slices, ``--size`` px)
replicated under new case ids (``case_000_r007``: a manifest of the project's own format)
until the train split holds enough rows, then ingested by ``aide_ray.data.ingest``: real
Parquet shards of 256 rows, as a user's data would be. The object store is set small
(``--object-store-mib`` per node, Ray's minimum is 75) so that "10x" means tens of
thousands of 64 px slices, not tens of GB. The rows needed are sized for the largest
cluster measured (the limit grows with the nodes' object stores), so the smaller ones
hold more than the multiple.

Producer, per cluster size N (``--nodes``): a ``ray.cluster_utils.Cluster`` of N nodes,
each with ``--data-cpus`` CPUs for Ray Data plus one for a consumer, in a subprocess of
its own (a fresh Ray, in its own temp folder). The ``train`` dataset of ``build_datasets``
(its own choice, which must be to stream), split over N consumer actors, one per node, by
the same ``DataConfig`` as a run's Train workers (``ExactSplits``: ``streaming_split``,
equal, with locality hints), each iterating its split with the workers' own
``iter_batches`` options (``iter_options``: batch 8, prefetch, local shuffle buffer) as
fast as it can, for ``--epochs`` epochs. Per epoch and consumer: slices, seconds, and the
time from the epoch's start to its first batch.

Consumer: AIDE's training step (``data_headroom.trainer_rate``: base width 8, batch 8,
one thread), before and after the clusters, averaged.

Printed (the epochs after the first; the first includes Ray Data's worker start-up):
``streaming_slices_per_s_<N>node`` (all consumers together),
``streaming_headroom_ratio_<N>node`` (the slowest consumer's slices/s over the trainer's:
how much faster than one Train worker trains, the pipeline feeds each worker; target >= 3),
``streaming_epoch_startup_seconds_<N>node`` (median over epochs of the slowest consumer's
wait for its first batch: a DDP epoch starts when every worker has one), and
``streaming_data_to_cache_limit_<N>node``; last the worst over the cluster sizes:
``streaming_epoch_startup_seconds=`` and ``streaming_headroom_ratio=``.

Run from the repository root: ``python benchmarks/streaming_scale.py`` (or ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cluster import MIB, simulated_cluster  # first: Ray's environment

TRAIN = {"train_split": "train", "val_split": "", "labelled_only": True, "unlabelled_fraction": 0.5}
BATCH_SIZE = 8


def train_rows_needed(multiple: float, store_mib: int, max_nodes: int, size: int) -> int:
    """Train rows whose decoded bytes are ``multiple`` times the cache limit of ``max_nodes`` nodes' stores."""
    from aide_ray.distributed.data_pipeline import CACHE_SHARE_OF_OBJECT_STORE, decoded_bytes

    limit = CACHE_SHARE_OF_OBJECT_STORE * store_mib * MIB * max_nodes
    return math.ceil(multiple * limit / decoded_bytes((1, size, size), 1))


def prepare_large_shards(root: Path, train_rows: int, size: int, slices: int, base_cases: int) -> Path:
    """Demo cases copied under new case ids until the train split has >= ``train_rows`` rows, ingested
    (reused when already there). Copies of one case are contiguous in the manifest's sort order, so
    ingest preprocesses each image once; every row is still read, encoded and written."""
    import pandas as pd

    from aide_ray.data.demo import demo_split_sizes, make_demo_data
    from aide_ray.data.ingest import ingest
    from aide_ray.data.manifest import read_manifest, write_manifest
    from aide_ray.data.preprocess import Preprocessing

    copies = math.ceil(train_rows / (demo_split_sizes(base_cases)[0] * slices))
    shards = root / f"shards_{size}px_{base_cases}x{slices}x{copies}"
    if (shards / "dataset.json").is_file():
        return shards
    start = time.perf_counter()
    base = make_demo_data(root / f"raw_{size}px_{base_cases}x{slices}", cases=base_cases, slices=slices, size=size,
                          overwrite=True)
    cases = read_manifest(base)
    manifest = write_manifest(pd.concat([cases.assign(case_id=cases["case_id"] + f"_r{i:03d}")
                                         for i in range(copies)], ignore_index=True),
                              base.parent / f"manifest_x{copies}.csv")
    ingest(manifest, shards, Preprocessing(size=size), overwrite=True, progress=False)
    print(f"data: {base_cases} demo cases x {copies} copies ingested in {time.perf_counter() - start:.1f} s",
          flush=True)
    return shards


class Consumer:
    """A stand-in for a Train worker's data side: iterates its split as fast as it can, epoch by epoch."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, iterator, epochs: int, options: dict) -> list[dict]:
        out = []
        for _ in range(epochs):
            start, first, rows = time.perf_counter(), None, 0
            for batch in iterator.iter_batches(**options):
                if first is None:
                    first = time.perf_counter() - start
                rows += len(batch["sample_index"])
            out.append({"rows": rows, "seconds": time.perf_counter() - start, "first_batch_s": first})
        return out


def child(params: dict) -> dict:
    """One cluster size: start it, stream ``params["epochs"]`` epochs into one consumer per node."""
    nodes = int(params["nodes"])
    spec = {"num_cpus": int(params["data_cpus"]) + 1, "object_store_memory": int(params["object_store_mib"]) * MIB}
    started = time.perf_counter()
    with simulated_cluster([spec] * nodes) as cluster:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from aide_ray.data.label_kinds import labelled_rows
        from aide_ray.data.shards import load_dataset_info
        from aide_ray.distributed.data_pipeline import (CACHE_SHARE_OF_OBJECT_STORE, build_datasets,
                                                        decoded_bytes, iter_options, use_cache)
        from aide_ray.distributed.trainer import ExactSplits, quiet_ray_data

        cluster_s = time.perf_counter() - started
        quiet_ray_data(False)
        shards = params["shards"]
        info = load_dataset_info(shards)
        store = float(ray.cluster_resources()["object_store_memory"])
        rows = labelled_rows(info["counts"]["split_label_kind"]["train"])
        to_limit = decoded_bytes(info["shape"], rows) / (CACHE_SHARE_OF_OBJECT_STORE * store)
        if use_cache(info, **TRAIN):
            raise SystemExit(f"the data fits the cache ({to_limit:.2f} x its limit): not a streaming benchmark")
        start = time.perf_counter()
        train = build_datasets(shards, **TRAIN, flip=True, max_retries=2, info=info)["train"]
        build_s = time.perf_counter() - start
        node_ids = [node.node_id for node in cluster.list_all_nodes()]
        consumer = ray.remote(num_cpus=1)(Consumer)
        consumers = [consumer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                     for node in node_ids]
        assert ray.get([c.node_id.remote() for c in consumers]) == node_ids
        splits = ExactSplits({}).configure({"train": train}, world_size=nodes, worker_handles=None,
                                           worker_node_ids=node_ids)
        options = iter_options(BATCH_SIZE, train=True, shuffle=True, streaming=True)
        epochs = ray.get([c.run.remote(split["train"], int(params["epochs"]), options)
                          for c, split in zip(consumers, splits)])
    return {"nodes": nodes, "cluster_s": cluster_s, "build_s": build_s, "train_rows": rows,
            "data_to_cache_limit": to_limit, "object_store_mib": store / MIB, "epochs": epochs}


def run_child(params: dict, timeout_s: float) -> dict:
    """:func:`child` in a fresh process (a fresh Ray per cluster; Ray Data's process-wide state is not reused)."""
    with tempfile.TemporaryDirectory(prefix="aide-ray-stream-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**params, "out": str(out)})],
                              timeout=timeout_s, text=True, capture_output=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the {params['nodes']}-node run failed (exit {proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(out.read_text())


def summarize(result: dict, trainer: float) -> dict:
    """Figures of one cluster size over the epochs after the first."""
    per_consumer = [epochs[1:] for epochs in result["epochs"]]
    rates = [sum(e["rows"] for e in eps) / sum(e["seconds"] for e in eps) for eps in per_consumer]
    startups = [max(eps[i]["first_batch_s"] for eps in per_consumer) for i in range(len(per_consumer[0]))]
    return {"slices_per_s": sum(rates), "slowest": min(rates), "headroom": min(rates) / trainer,
            "startup": statistics.median(startups), "to_limit": result["data_to_cache_limit"]}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the smallest run that keeps the 10x: 75 MiB stores, 2 epochs, a short trainer")
    parser.add_argument("--nodes", default="1,2", help="cluster sizes to measure, comma-separated")
    parser.add_argument("--object-store-mib", type=int, default=None, help="per node (default 100; quick 75)")
    parser.add_argument("--data-cpus", type=int, default=2, help="CPUs per node for Ray Data (plus 1 for a consumer)")
    parser.add_argument("--multiple", type=float, default=10.0, help="decoded train rows / cache limit, at least")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=64, help="slices per demo case")
    parser.add_argument("--base-cases", type=int, default=12, help="distinct demo cases, copied as needed")
    parser.add_argument("--epochs", type=int, default=None, help="passes per cluster; the first is not counted "
                                                                  "(default 4; quick 2)")
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=None, help="untimed trainer steps (default 2; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed trainer steps (default 12; quick 4)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per cluster size")
    parser.add_argument("--data", default=None, help="folder to keep the generated data in (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        params = json.loads(args.child)
        Path(params["out"]).write_text(json.dumps(child(params)))
        return 0.0
    quick = args.quick
    store_mib = args.object_store_mib or (75 if quick else 100)
    epochs = args.epochs or (2 if quick else 4)
    warmup, steps = args.warmup or (1 if quick else 2), args.steps or (4 if quick else 12)
    nodes = sorted({int(n) for n in args.nodes.split(",")})
    if epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is start-up), got {epochs}")
    if store_mib < 75:
        parser.error(f"--object-store-mib must be >= 75 (Ray's minimum), got {store_mib}")

    import torch
    from _common import prepare_shards
    from data_headroom import trainer_rate

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-bench-"))
    root = Path(args.data) if args.data else tmp / "data"
    try:
        needed = train_rows_needed(args.multiple, store_mib, max(nodes), args.size)
        shards = prepare_large_shards(root, needed, args.size, args.slices, args.base_cases)
        small = prepare_shards(root / "trainer", cases=12, slices=8, size=args.size)  # the step's cost only
        trainer = [trainer_rate(small, args.base_width, BATCH_SIZE, warmup, steps)]
        results = {}
        for n in nodes:
            params = {"nodes": n, "data_cpus": args.data_cpus, "object_store_mib": store_mib, "epochs": epochs,
                      "shards": str(shards)}
            results[n] = run_child(params, args.timeout_s)
            r = results[n]
            print(f"{n} node(s): cluster {r['cluster_s']:.1f} s, datasets built in {r['build_s']:.2f} s, "
                  f"{r['train_rows']} train rows = {r['data_to_cache_limit']:.1f} x the cache limit "
                  f"({r['object_store_mib']:.0f} MiB of object store)", flush=True)
            for rank, eps in enumerate(r["epochs"]):
                print(f"  consumer {rank}: " + ", ".join(
                    f"{e['rows']} slices in {e['seconds']:.2f} s (first batch {e['first_batch_s']:.2f} s)"
                    for e in eps), flush=True)
        trainer.append(trainer_rate(small, args.base_width, BATCH_SIZE, warmup, steps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    consume = statistics.mean(trainer)
    print(f"AIDE trainer (1 thread, batch {BATCH_SIZE}): {', '.join(f'{t:.1f}' for t in trainer)} slices/s "
          f"(before, after) | target headroom >= 3", flush=True)
    figures = {n: summarize(results[n], consume) for n in nodes}
    for n, f in figures.items():
        print(f"streaming_data_to_cache_limit_{n}node={f['to_limit']:.2f}")
        print(f"streaming_slices_per_s_{n}node={f['slices_per_s']:.1f}")
        print(f"streaming_epoch_startup_seconds_{n}node={f['startup']:.3f}")
        print(f"streaming_headroom_ratio_{n}node={f['headroom']:.3f}")
    ratio = min(f["headroom"] for f in figures.values())
    print(f"streaming_epoch_startup_seconds={max(f['startup'] for f in figures.values()):.3f}")
    print(f"streaming_headroom_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
