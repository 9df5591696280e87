"""Scale benchmark of AIDE's label store (aide_ray.labels.LabelStore).

Simulates label-correction epochs on the plain store for N = 10^4, 10^5, 10^6
samples of 256 x 256 with R = 0.25 and 2 slots. Per epoch and slot: several
simulated workers report their local lowest-k of random scores, the store
selects the global lowest R*N, the new labels of those samples are committed in
batches, and at the end of the epoch one delta (changes_since) is taken. Only
the store's calls are timed: scores, local selections and masks are made
outside the timed regions. Masks come from a pool of (source, corrected) pairs
(the correction adds or removes a blob at the boundary; 10 % equal the source,
i.e. revert) reused through views, because 500k fresh 256 x 256 masks per epoch
would cost more than the store does. Snapshots are off in the timed part; one
snapshot (and its restore) is timed separately at the end.

Each N runs in its own process so that the resident-memory growth (from
/proc/self/statm) belongs to that N only.

Usage:
    .venv/bin/python benchmarks/label_store_scale.py [--sizes 10000 100000 1000000] [--epochs 2]
The last two lines are ``label_store_1m_seconds=...`` and ``label_store_1m_gib=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024**3
TARGET_SECONDS = 10.0
TARGET_GIB = 2.0


def _rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def make_pool(size: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, corrected) label pairs, each (size, side, side) uint8 in {0, 1}.

    Sources are ellipses of random centre and axes (organ-like); each corrected
    label adds or removes a disc of radius 4-24 px centred near the source's
    boundary; 10 % of the corrected labels equal their source.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    source = np.empty((size, side, side), dtype=np.uint8)
    corrected = np.empty_like(source)
    for i in range(size):
        cy, cx = rng.uniform(0.35, 0.65, 2) * side
        ry, rx = rng.uniform(0.15, 0.35, 2) * side
        source[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        corrected[i] = source[i]
        if rng.random() < 0.1:
            continue
        angle = rng.uniform(0, 2 * np.pi)
        by, bx = cy + ry * np.sin(angle), cx + rx * np.cos(angle)
        radius = rng.uniform(4, 24)
        blob = (yy - by) ** 2 + (xx - bx) ** 2 <= radius**2
        corrected[i][blob] = 1 if rng.random() < 0.5 else 0
    return source, corrected


def run_one(num_samples: int, args: argparse.Namespace) -> dict[str, float]:
    """Simulate ``args.epochs`` epochs at one N; returns the figures of that N."""
    from aide_ray.labels import LabelCache, LabelStore, encode_differences

    rng = np.random.default_rng(args.seed)
    pool_source, pool_masks = make_pool(args.pool, args.side, args.seed)
    rss_start = _rss_bytes()
    store = LabelStore(num_samples, args.slots, (args.side, args.side), snapshot_path=None)
    k = int(round(args.ratio * num_samples))
    shards = [np.arange(w, num_samples, args.workers) for w in range(args.workers)]
    timed = {"report": 0.0, "select": 0.0, "commit": 0.0, "changes": 0.0}
    cpu = 0.0
    delta_entries = 0
    delta_mib = cache_apply_s = 0.0
    deltas = []
    for epoch in range(args.epochs):
        version_before = store.version
        for slot in range(args.slots):
            scores = rng.random(num_samples, dtype=np.float32)
            # Each worker's local lowest-k: made by the workers, not timed.
            reports = []
            for shard in shards:
                local_k = min(k, shard.size)
                part = np.argpartition(scores[shard], local_k - 1)[:local_k] if local_k < shard.size else None
                local = shard if part is None else shard[part]
                reports.append((local, scores[local]))
            t, c = time.perf_counter(), time.process_time()
            for local, local_scores in reports:
                store.report_candidates(epoch, slot, local, local_scores)
            timed["report"] += time.perf_counter() - t
            t1 = time.perf_counter()
            chosen = store.select(epoch, slot, k)
            timed["select"] += time.perf_counter() - t1
            cpu += time.process_time() - c
            for start in range(0, chosen.size, args.chunk):
                ids = chosen[start : start + args.chunk]
                offset = int(rng.integers(0, args.pool - ids.size + 1))
                masks = pool_masks[offset : offset + ids.size]  # views: no copy
                source = pool_source[offset : offset + ids.size]
                if args.worker_encode:
                    entries = encode_differences(masks, source)  # on the workers: not timed
                    t, c = time.perf_counter(), time.process_time()
                    store.commit_encoded(epoch, slot, ids, entries)
                else:
                    t, c = time.perf_counter(), time.process_time()
                    store.commit(epoch, slot, ids, masks, source)
                timed["commit"] += time.perf_counter() - t
                cpu += time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        delta = store.changes_since(version_before)
        timed["changes"] += time.perf_counter() - t
        cpu += time.process_time() - c
        delta_entries += len(delta)
        deltas.append(delta)  # shares the entries' bytes with the store
    rss_growth = _rss_bytes() - rss_start
    # Worker side, outside the epoch time and the memory figure: what one worker
    # downloads and applies per epoch.
    cache = LabelCache(num_samples, args.slots, (args.side, args.side))
    for delta in deltas:
        delta_mib += len(pickle.dumps(delta, protocol=5)) / 2**20
        t = time.perf_counter()
        cache.apply(delta)
        cache_apply_s += time.perf_counter() - t
    del deltas, cache
    stats = store.stats()
    corrected = int(sum(stats["corrected"]))

    with tempfile.TemporaryDirectory(prefix="label-store-bench-") as tmp:
        path = Path(tmp) / "labels.npz"
        t = time.perf_counter()
        store.save_snapshot(path)
        snapshot_s = time.perf_counter() - t
        snapshot_bytes = path.stat().st_size
        t = time.perf_counter()
        restored = LabelStore.from_snapshot_file(path)
        restore_s = time.perf_counter() - t
        if restored.stats() != stats:
            raise RuntimeError("the snapshot round trip changed the store's statistics")
        del restored

    epochs = args.epochs
    return {
        "N": num_samples,
        "epochs": epochs,
        "s_per_epoch": sum(timed.values()) / epochs,
        "cpu_s_per_epoch": cpu / epochs,
        "report_s": timed["report"] / epochs,
        "select_s": timed["select"] / epochs,
        "commit_s": timed["commit"] / epochs,
        "changes_s": timed["changes"] / epochs,
        "delta_entries": delta_entries / epochs,
        "delta_mib": delta_mib / epochs,
        "cache_apply_s": cache_apply_s / epochs,
        "corrected": corrected,
        "entry_bytes": stats["stored_bytes"] / max(corrected, 1),
        "store_gib": store.memory_bytes() / GIB,
        "rss_growth_gib": rss_growth / GIB,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "snapshot_s": snapshot_s,
        "snapshot_mib": snapshot_bytes / 2**20,
        "restore_s": restore_s,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6], help="values of N")
    parser.add_argument("--epochs", type=int, default=2, help="simulated epochs per N (default 2)")
    parser.add_argument("--slots", type=int, default=2, help="label slots (default 2)")
    parser.add_argument("--ratio", type=float, default=0.25, help="share R of N corrected per epoch and slot")
    parser.add_argument("--side", type=int, default=256, help="labels are side x side (default 256)")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers reporting candidates")
    parser.add_argument("--chunk", type=int, default=512, help="samples per commit call (default 512)")
    parser.add_argument("--pool", type=int, default=1024, help="(source, corrected) pairs reused (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker-encode",
        action="store_true",
        help="workers encode (untimed) and the store only runs commit_encoded",
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: one N, JSON out
    args = parser.parse_args(argv)
    if args.pool < args.chunk:
        parser.error(f"--pool must be >= --chunk, got {args.pool} < {args.chunk}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args)))
        return 0
    import pandas as pd

    passthrough = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for n in args.sizes:
        child = subprocess.run(
            [sys.executable, __file__, *passthrough, "--one", str(n)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"N={n}: {rows[-1]['s_per_epoch']:.2f} s/epoch", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).set_index("N")
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        mode = "commit_encoded (workers encode)" if args.worker_encode else "commit (store encodes)"
        print(f"label store, {args.side}x{args.side}, R={args.ratio}, {args.slots} slots, {args.workers} workers, "
              f"{args.epochs} epochs, {mode} in batches of {args.chunk}")
        print(table[["s_per_epoch", "cpu_s_per_epoch", "report_s", "select_s", "commit_s", "changes_s",
                     "rss_growth_gib", "peak_rss_gib", "store_gib", "corrected", "entry_bytes"]])
        print("outside the timed epochs: one delta per epoch on a worker, one snapshot written to a file:")
        print(table[["delta_entries", "delta_mib", "cache_apply_s", "snapshot_s", "snapshot_mib", "restore_s"]])
    seconds = gib = float("nan")
    if 10**6 in table.index:
        seconds = float(table.loc[10**6, "s_per_epoch"])
        gib = float(table.loc[10**6, "rss_growth_gib"])
        met = seconds <= TARGET_SECONDS and gib <= TARGET_GIB
        print(f"target at N=10^6 (<= {TARGET_SECONDS:g} s/epoch, <= {TARGET_GIB:g} GiB): {'met' if met else 'NOT met'}")
    print(f"label_store_1m_seconds={seconds:.3f}")
    print(f"label_store_1m_gib={gib:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
