"""Tests of aide_ray.labels.snapshot through LabelStore: round trips, restarts from snapshot_path, restores."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from aide_ray.exceptions import CheckpointError
from aide_ray.labels import LabelCache, LabelStore

from .helpers import SHAPE, assert_same_store, make_pairs, random_history


def test_snapshot_round_trip_bytes_and_file(tmp_path):
    n = 8
    source = make_pairs(n, seed=11)[0]
    store = LabelStore(n, 2, SHAPE)
    random_history(store, source, steps=10, seed=12)
    data = store.snapshot_bytes()
    assert_same_store(store, LabelStore.from_snapshot_bytes(data), source)

    path = tmp_path / "labels.npz"
    store.save_snapshot(path)
    with np.load(path, allow_pickle=False) as npz:  # plain NPZ, no pickle
        assert int(npz["version"]) == store.version
        assert npz["entry_data"].size == npz["entry_length"].sum() == store.stats()["stored_bytes"]
    assert_same_store(store, LabelStore.from_snapshot_file(path), source)
    restored = LabelStore(n, 2, SHAPE)
    restored.load_snapshot(path)
    assert_same_store(store, restored, source)
    # The restored store goes on like the original, including retry detection.
    nxt = make_pairs(1, seed=13)[1]
    assert restored.commit(9, 0, np.array([0]), nxt, source[:1]) == store.commit(9, 0, np.array([0]), nxt, source[:1])
    assert_same_store(store, restored, source)

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
    source, masks = make_pairs(n, seed=14)
    path = tmp_path / "store" / "labels.npz"
    store = LabelStore(n, 2, SHAPE, snapshot_path=path)
    store.report_candidates(0, 0, np.array([0, 1, 2]), np.array([0.3, 0.1, 0.2], dtype=np.float32))
    store.select(0, 0, 2)
    store.report_candidates(0, 1, np.array([3, 4]), np.array([0.5, 0.4], dtype=np.float32))
    version = store.commit(0, 0, np.array([1, 2]), masks[[1, 2]], source[[1, 2]])
    assert path.exists()

    again = LabelStore(n, 2, SHAPE, snapshot_path=path)
    assert_same_store(store, again, source)
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
    assert_same_store(old, LabelStore(n, 2, SHAPE, snapshot_path=path), source)
    # A cache filled before the restore belongs to another history (its version numbers mean other labels).
    restored_msg = r"restored from a snapshot after this cache was filled; call cache.reset\(\)"
    with pytest.raises(RuntimeError, match=restored_msg):
        cache.apply(again.changes_since(cache.version))
    cache.reset()
    cache.apply(again.changes_since(0))
    np.testing.assert_array_equal(cache.current(1, np.arange(n), source), old.current(1, np.arange(n), source))
