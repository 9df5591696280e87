"""Tests of aide_ray.engine.label_store: selection, commits, deltas, cache, snapshots, Ray actor."""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile

import numpy as np
import pytest

from aide_ray.engine.label_store import (
    LabelCache,
    LabelStore,
    apply_difference,
    create_label_store_actor,
    encode_differences,
)
from aide_ray.exceptions import CheckpointError

SHAPE = (24, 32)


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)


def _pairs(n: int, shape: tuple[int, int] = SHAPE, seed: int = 0, classes: int = 2):
    """n (source, corrected) label pairs; each correction changes the class inside a small disc."""
    rng = np.random.default_rng(seed)
    h, w = shape
    source = np.stack([_disc(shape, h / 2, w / 2, rng.uniform(1, max(2, min(h, w) / 3))) for _ in range(n)])
    if classes > 2:
        source = source * rng.integers(1, classes, size=(n, 1, 1)).astype(np.uint8)
    masks = source.copy()
    for i in range(n):
        blob = _disc(shape, rng.integers(0, h), rng.integers(0, w), rng.uniform(1, 4)).astype(bool)
        masks[i][blob] = (masks[i][blob] + rng.integers(1, classes)) % classes
    return source, masks


# ----------------------------------------------------------------- encoding


@pytest.mark.parametrize("shape", [(24, 32), (17, 27), (1, 8)])
@pytest.mark.parametrize("classes", [2, 4])
def test_encode_then_apply_reproduces_labels(shape, classes):
    source, masks = _pairs(12, shape, seed=3, classes=classes)
    masks[0] = source[0]  # one unchanged label
    masks[1] = (masks[1] + 1) % classes  # one label changed everywhere
    entries = encode_differences(masks, source)
    assert entries[0] is None
    for i, entry in enumerate(entries):
        label = source[i].copy()
        if entry is not None:
            apply_difference(label, entry)
        np.testing.assert_array_equal(label, masks[i])


def test_near_source_correction_is_tiny():
    source = _disc((256, 256), 128, 128, 60)
    near = source.copy()
    near[60:63, 100:103] ^= 1  # 9 pixels flipped
    blob = source.copy()
    blob[_disc((256, 256), 70, 128, 40).astype(bool)] = 1  # a large blob added
    near_entry, blob_entry = encode_differences(np.stack([near, blob]), np.stack([source, source]))
    # 9-byte box header + 3 x 8 bits; the raw label is 65536 bytes, packed 8192.
    assert len(near_entry) <= 16
    assert blob_entry[0] == 3 and len(blob_entry) < 300  # bit-packed, then zlib (box 52 x 88 px = 572 bytes packed)
    store = LabelStore(4, 1, (256, 256))
    store.commit(0, 0, np.array([1]), near[None], source[None])
    assert store.stats()["stored_bytes"] == len(near_entry)


# ----------------------------------------------------------------- selection


def test_select_is_global_lowest_k_across_workers():
    n, k, workers = 120, 17, 3
    rng = np.random.default_rng(1)
    scores = rng.choice(np.linspace(0, 1, 40), size=n).astype(np.float32)  # many ties
    store = LabelStore(n, 2, SHAPE)
    for w in range(workers):
        shard = np.arange(w, n, workers)
        local = shard[np.lexsort((shard, scores[shard]))[:k]]  # each worker's local lowest-k
        store.report_candidates(4, 1, local, scores[local])
    expected = np.lexsort((np.arange(n), scores))[:k]
    np.testing.assert_array_equal(store.select(4, 1, k), expected)
    # Another slot of the same epoch has no reports yet.
    assert store.select(4, 0, k).size == 0


def test_reports_and_select_are_idempotent():
    store = LabelStore(10, 2, SHAPE)
    idx = np.array([3, 1, 7])
    scores = np.array([0.5, 0.2, 0.9], dtype=np.float32)
    store.report_candidates(0, 0, idx, scores)
    store.report_candidates(0, 0, idx, scores)  # retried worker
    # Another worker reports sample 7 with a lower score: it counts once, with 0.1.
    store.report_candidates(0, 0, np.array([7, 9]), np.array([0.1, 0.95], dtype=np.float32))
    first = store.select(0, 0, 3)
    np.testing.assert_array_equal(first, [7, 1, 3])
    store.report_candidates(0, 0, np.array([0]), np.array([0.0], dtype=np.float32))  # too late: ignored
    np.testing.assert_array_equal(store.select(0, 0, 3), first)
    np.testing.assert_array_equal(store.select(0, 0, 3), first)
    np.testing.assert_array_equal(store.select(0, 1, 2), [])  # more than reported: all of them
    with pytest.raises(ValueError, match=r"select\(epoch=0, slot=0\) was answered with k=3, got k=4"):
        store.select(0, 0, 4)


# ----------------------------------------------------------------- commits and deltas


def test_commit_retry_does_not_double_count():
    source, masks = _pairs(4, seed=2)
    store = LabelStore(10, 2, SHAPE)
    idx = np.array([2, 5, 6, 9])
    v1 = store.commit(0, 1, idx, masks, source)
    stats = store.stats()
    assert v1 == 1 and stats["corrected"][1] == 4 and stats["changed_per_epoch"] == {0: [0, 4]}
    assert store.commit(0, 1, idx, masks, source) == v1  # retry
    # Entries encoded on a worker are the same commit.
    assert store.commit_encoded(0, 1, idx, encode_differences(masks, source)) == v1
    assert store.stats() == stats
    # A later commit in the same epoch, then a late retry of the first: the later label stays.
    other = source.copy()
    other[:, :4] ^= 1
    v2 = store.commit(0, 1, idx[:1], other[:1], source[:1])
    assert store.commit(0, 1, idx, masks, source) == v1
    assert store.version == v2
    np.testing.assert_array_equal(store.get(1, 2, source[0]), other[0])
    # The same sample changed twice in one epoch counts once for that epoch.
    assert store.stats()["changed_per_epoch"] == {0: [0, 4]}
    # A worker with no winners commits nothing, which is still a valid commit.
    none = np.zeros((0, *SHAPE), np.uint8)
    assert store.commit(0, 0, np.zeros(0, np.int64), none, none) == v2 + 1
    assert store.stats()["corrected"] == [0, 4]


def test_revert_to_source_removes_entry_and_reports_none():
    source, masks = _pairs(3, seed=4)
    store = LabelStore(5, 2, SHAPE)
    idx = np.array([0, 2, 4])
    v1 = store.commit(0, 0, idx, masks, source)
    v2 = store.commit(1, 1, idx[:1], masks[:1], source[:1])
    assert store.get(0, 2) is not None
    v3 = store.commit(2, 0, idx[1:2], source[1:2], source[1:2])  # back to the source label
    assert store.get(0, 2) is None
    assert store.stats()["corrected"] == [2, 1]
    assert store.stats()["changed_per_epoch"] == {0: [3, 0], 1: [0, 1], 2: [1, 0]}
    assert store.stats()["changed_cumulative"] == [4, 1]
    delta = store.changes_since(v2)
    assert (delta.since, delta.version) == (v2, v3)
    assert delta.slot.tolist() == [0] and delta.sample_index.tolist() == [2] and delta.packed == [None]
    delta = store.changes_since(v1)
    assert sorted(zip(delta.slot.tolist(), delta.sample_index.tolist())) == [(0, 2), (1, 0)]
    assert delta.slot.dtype == np.int8 and delta.sample_index.dtype == np.int64
    assert len(store.changes_since(v3)) == 0
    # Everything reverted: nothing stored.
    store.commit(3, 0, idx[[0, 2]], source[[0, 2]], source[[0, 2]])
    store.commit(3, 1, idx[:1], source[:1], source[:1])
    assert store.stats()["corrected"] == [0, 0] and store.stats()["stored_bytes"] == 0
    with pytest.raises(ValueError, match=r"version must be in \[0, 6\), got 9"):
        store.changes_since(9)


def _random_history(store: LabelStore, source: np.ndarray, steps: int, seed: int, cache: LabelCache | None = None):
    """Random commits; returns the expected labels {(slot, i): label} and, if a cache, syncs it each step."""
    rng = np.random.default_rng(seed)
    truth = {}
    for step in range(steps):
        slot = int(rng.integers(store.label_slots))
        idx = rng.choice(store.num_samples, size=int(rng.integers(1, min(5, store.num_samples + 1))), replace=False)
        masks = source[idx].copy()
        for j in range(idx.size):
            if rng.random() < 0.7:
                y, x = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1])
                masks[j, max(0, y - 2) : y + 2, max(0, x - 3) : x + 3] ^= 1
        store.commit(step // 3, slot, idx, masks, source[idx])
        for j, i in enumerate(idx.tolist()):
            truth[(slot, i)] = masks[j]
        if cache is not None and rng.random() < 0.5:
            cache.apply(store.changes_since(cache.version))
    return truth


def test_label_cache_reproduces_store():
    n = 9
    source = _pairs(n, seed=5)[0]
    store = LabelStore(n, 2, SHAPE)
    cache = LabelCache(n, 2, SHAPE)
    truth = _random_history(store, source, steps=25, seed=6, cache=cache)
    cache.apply(store.changes_since(cache.version))
    assert cache.version == store.version
    fresh = LabelCache(n, 2, SHAPE)
    fresh.apply(store.changes_since(0))
    for slot in range(2):
        expected = np.stack([truth.get((slot, i), source[i]) for i in range(n)])
        batch = np.array([4, 0, 8, 2])
        for reader in (cache, fresh, store):
            np.testing.assert_array_equal(reader.current(slot, batch, source[batch]), expected[batch])
        assert cache.num_corrected(slot) == store.stats()["corrected"][slot]
        for i in range(n):
            label = store.get(slot, i, source[i])
            if label is None:
                np.testing.assert_array_equal(expected[i], source[i])
            else:
                np.testing.assert_array_equal(label, expected[i])
                np.testing.assert_array_equal(store.get(slot, i) ^ source[i], expected[i])


def test_label_cache_rejects_gaps_and_other_stores():
    source, masks = _pairs(2, seed=7)
    store = LabelStore(4, 2, SHAPE)
    v1 = store.commit(0, 0, np.array([0, 1]), masks, source)
    store.commit(0, 1, np.array([0, 1]), masks, source)
    cache = LabelCache(4, 2, SHAPE)
    gap = r"covers versions after 1 but the cache is at 0; request store.changes_since\(0\)"
    with pytest.raises(RuntimeError, match=gap):
        cache.apply(store.changes_since(v1))
    cache.apply(store.changes_since(0))
    empty = {"slot": np.zeros(0, np.int8), "sample_index": np.zeros(0, np.int64), "packed": []}
    stale = dataclasses.replace(store.changes_since(0), version=0, **empty)
    with pytest.raises(RuntimeError, match="delta ends at version 0, older than the cache's 2"):
        cache.apply(stale)
    with pytest.raises(ValueError, match=r"delta is for \(num_samples, label_slots, shape\) = \(4, 2, \(24, 32\)\)"):
        LabelCache(5, 2, SHAPE).apply(store.changes_since(0))


def test_changes_since_after_log_compaction_matches_scan():
    # 2 x 3 entries: the log keeps at most 6 records, so old versions are answered by the scan.
    source = _pairs(3, seed=8)[0]
    store = LabelStore(3, 2, SHAPE)
    truth = _random_history(store, source, steps=12, seed=9)
    assert store._log_floor > 0
    for since in range(store.version + 1):
        delta = store.changes_since(since)
        cache = LabelCache(3, 2, SHAPE)
        cache.apply(store.changes_since(0))
        changed = {(s, i) for s, i in zip(delta.slot.tolist(), delta.sample_index.tolist())}
        expected = {(s, i) for s in range(2) for i in range(3) if store._last_changed[s, i] > since}
        assert changed == expected and len(changed) == len(delta)
    for (slot, i), label in truth.items():
        np.testing.assert_array_equal(cache.current(slot, np.array([i]), source[i : i + 1])[0], label)


def test_input_errors_name_the_problem():
    store = LabelStore(5, 2, SHAPE)
    source, masks = _pairs(2, seed=10)
    with pytest.raises(TypeError, match="masks must have dtype uint8, got bool"):
        store.commit(0, 0, np.array([0, 1]), masks.astype(bool), source)
    with pytest.raises(ValueError, match=r"masks must have shape \(n, 24, 32\), got \(2, 32, 24\)"):
        store.commit(0, 0, np.array([0, 1]), masks.transpose(0, 2, 1).copy(), source)
    with pytest.raises(ValueError, match=r"sample_index must be in \[0, 5\), got \[7\]"):
        store.commit(0, 0, np.array([0, 7]), masks, source)
    with pytest.raises(ValueError, match="must not repeat a sample"):
        store.commit(0, 0, np.array([1, 1]), masks, source)
    with pytest.raises(ValueError, match=r"slot must be in \[0, 2\), got 2"):
        store.commit(0, 2, np.array([0, 1]), masks, source)
    with pytest.raises(ValueError, match=r"scores must be finite, got NaN/inf for sample_index \[3\]"):
        store.report_candidates(0, 0, np.array([2, 3]), np.array([0.1, np.nan], dtype=np.float32))
    with pytest.raises(TypeError, match="sample_index must be an integer array, got dtype float64"):
        store.report_candidates(0, 0, np.array([2.0]), np.array([0.1], dtype=np.float32))
    with pytest.raises(TypeError, match="packed entries must be bytes from encode_differences or None, got str"):
        store.commit_encoded(0, 0, np.array([0]), ["label"])
    with pytest.raises(ValueError, match="packed must hold 2 entries"):
        store.commit_encoded(0, 0, np.array([0, 1]), [None])
    with pytest.raises(ValueError, match=r"label_slots must be in \[1, 128\), got 0"):
        LabelStore(5, 0, SHAPE)


# ----------------------------------------------------------------- snapshots


def _assert_same_store(a: LabelStore, b: LabelStore, source: np.ndarray) -> None:
    assert a.version == b.version and a.stats() == b.stats()
    all_idx = np.arange(a.num_samples)
    for slot in range(a.label_slots):
        np.testing.assert_array_equal(a.current(slot, all_idx, source), b.current(slot, all_idx, source))
    da, db = a.changes_since(0), b.changes_since(0)
    assert sorted(zip(da.slot.tolist(), da.sample_index.tolist(), da.packed)) == sorted(
        zip(db.slot.tolist(), db.sample_index.tolist(), db.packed)
    )


def test_snapshot_round_trip_bytes_and_file(tmp_path):
    n = 8
    source = _pairs(n, seed=11)[0]
    store = LabelStore(n, 2, SHAPE)
    _random_history(store, source, steps=10, seed=12)
    data = store.snapshot_bytes()
    _assert_same_store(store, LabelStore.from_snapshot_bytes(data), source)

    path = tmp_path / "labels.npz"
    store.save_snapshot(path)
    with np.load(path, allow_pickle=False) as npz:  # plain NPZ, no pickle
        assert int(npz["version"]) == store.version
        assert npz["entry_data"].size == npz["entry_length"].sum() == store.stats()["stored_bytes"]
    _assert_same_store(store, LabelStore.from_snapshot_file(path), source)
    restored = LabelStore(n, 2, SHAPE)
    restored.load_snapshot(path)
    _assert_same_store(store, restored, source)
    # The restored store goes on like the original, including retry detection.
    nxt = _pairs(1, seed=13)[1]
    assert restored.commit(9, 0, np.array([0]), nxt, source[:1]) == store.commit(9, 0, np.array([0]), nxt, source[:1])
    _assert_same_store(store, restored, source)

    other = r"was made for \(num_samples, label_slots, shape\) = \(8, 2, \(24, 32\)\)"
    with pytest.raises(CheckpointError, match=other):
        LabelStore(9, 2, SHAPE).load_snapshot(path)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("version.npy", b"junk")
    with pytest.raises(CheckpointError, match="bad.npz is not a label-store snapshot: missing"):
        LabelStore(n, 2, SHAPE).load_snapshot(bad)


def test_snapshot_path_survives_restart(tmp_path):
    """A store rebuilt with the same arguments (what an actor restart does) loses nothing."""
    n = 6
    source, masks = _pairs(n, seed=14)
    path = tmp_path / "store" / "labels.npz"
    store = LabelStore(n, 2, SHAPE, snapshot_path=path)
    store.report_candidates(0, 0, np.array([0, 1, 2]), np.array([0.3, 0.1, 0.2], dtype=np.float32))
    store.select(0, 0, 2)
    store.report_candidates(0, 1, np.array([3, 4]), np.array([0.5, 0.4], dtype=np.float32))
    version = store.commit(0, 0, np.array([1, 2]), masks[[1, 2]], source[[1, 2]])
    assert path.exists()

    again = LabelStore(n, 2, SHAPE, snapshot_path=path)
    _assert_same_store(store, again, source)
    assert again.commit(0, 0, np.array([1, 2]), masks[[1, 2]], source[[1, 2]]) == version  # retried after restart
    np.testing.assert_array_equal(again.select(0, 0, 2), [1, 2])  # answer kept
    again.report_candidates(0, 1, np.array([5]), np.array([0.45], dtype=np.float32))
    np.testing.assert_array_equal(again.select(0, 1, 3), [4, 5, 3])  # pending report kept
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]

    # Restoring an older checkpoint into the running store is what a restart then reloads.
    cache = LabelCache(n, 2, SHAPE)
    cache.apply(again.changes_since(0))
    old = LabelStore(n, 2, SHAPE)
    old.commit(0, 1, np.array([5]), masks[5:6], source[5:6])
    old.commit(0, 1, np.array([4]), masks[4:5], source[4:5])
    again.load_snapshot_bytes(old.snapshot_bytes())
    assert again.version == 2
    assert list((path.parent / "labels.npz.pending").glob("*.npz")) == []
    _assert_same_store(old, LabelStore(n, 2, SHAPE, snapshot_path=path), source)
    # A cache filled before the restore belongs to another history (its version numbers mean other labels).
    restored_msg = r"restored from a snapshot after this cache was filled; call cache.reset\(\)"
    with pytest.raises(RuntimeError, match=restored_msg):
        cache.apply(again.changes_since(cache.version))
    cache.reset()
    cache.apply(again.changes_since(0))
    np.testing.assert_array_equal(cache.current(1, np.arange(n), source), old.current(1, np.arange(n), source))


# ----------------------------------------------------------------- Ray actor


@pytest.mark.ray
def test_actor_restart_reloads_snapshot(ray_cluster, tmp_path):
    ray = ray_cluster
    n = 10
    source, masks = _pairs(n, seed=15)
    actor = create_label_store_actor(n, 2, SHAPE, str(tmp_path / "labels.npz"))
    try:
        for w in range(2):
            shard = np.arange(w, n, 2)
            ray.get(actor.report_candidates.remote(1, 0, shard, np.linspace(0.9, 0.1, shard.size, dtype=np.float32)))
        chosen = ray.get(actor.select.remote(1, 0, 4))
        np.testing.assert_array_equal(chosen, [8, 9, 6, 7])
        version = ray.get(actor.commit.remote(1, 0, chosen, masks[chosen], source[chosen]))
        ray.get(actor.report_candidates.remote(1, 1, np.array([2, 3]), np.array([0.2, 0.1], dtype=np.float32)))
        stats = ray.get(actor.stats.remote())
        delta = ray.get(actor.changes_since.remote(0))
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))

        ray.kill(actor, no_restart=False)
        # The kill is asynchronous: wait until calls are served by the restarted process.
        deadline = time.monotonic() + 60
        while ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60) == pid:
            assert time.monotonic() < deadline, "the actor was not restarted within 60 s"
            time.sleep(0.1)
        assert ray.get(actor.stats.remote()) == stats
        assert ray.get(actor.commit.remote(1, 0, chosen, masks[chosen], source[chosen])) == version
        assert ray.get(actor.stats.remote()) == stats
        np.testing.assert_array_equal(ray.get(actor.select.remote(1, 0, 4)), chosen)
        np.testing.assert_array_equal(ray.get(actor.select.remote(1, 1, 4)), [3, 2])
        cache = LabelCache(n, 2, SHAPE)
        cache.apply(ray.get(actor.changes_since.remote(0)))
        assert cache.version == delta.version == version
        np.testing.assert_array_equal(cache.current(0, chosen, source[chosen]), masks[chosen])
    finally:
        ray.kill(actor, no_restart=True)
