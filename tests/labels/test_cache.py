"""Tests of aide_ray.labels.cache: a worker cache fed by deltas reproduces the store and refuses gaps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aide_ray.labels import LabelCache, LabelStore

from .helpers import SHAPE, make_pairs, random_history


def test_label_cache_reproduces_store():
    n = 9
    source = make_pairs(n, seed=5)[0]
    store = LabelStore(n, 2, SHAPE)
    cache = LabelCache(n, 2, SHAPE)
    truth = random_history(store, source, steps=25, seed=6, cache=cache)
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
    source, masks = make_pairs(2, seed=7)
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
