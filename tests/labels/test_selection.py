"""Tests of aide_ray.labels.selection through LabelStore: global lowest-k across workers, fixed answers."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.labels import LabelStore

from .helpers import SHAPE


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
