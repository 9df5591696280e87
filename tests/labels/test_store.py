"""Tests of aide_ray.labels.store: commits (idempotent, reverting), deltas, statistics, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.labels import LabelStore, encode_differences

from .helpers import SHAPE, make_pairs


def test_commit_retry_does_not_double_count():
    source, masks = make_pairs(4, seed=2)
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
    source, masks = make_pairs(3, seed=4)
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


def test_input_errors_name_the_problem():
    store = LabelStore(5, 2, SHAPE)
    source, masks = make_pairs(2, seed=10)
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
