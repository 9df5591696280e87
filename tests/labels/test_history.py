"""Tests of aide_ray.labels.history through LabelStore: the change log and its compaction."""

from __future__ import annotations

import numpy as np

from aide_ray.labels import LabelCache, LabelStore

from .helpers import SHAPE, make_pairs, random_history


def test_changes_since_after_log_compaction_matches_scan():
    # 2 x 3 entries: the log keeps at most 6 records, so old versions are answered by the scan.
    source = make_pairs(3, seed=8)[0]
    store = LabelStore(3, 2, SHAPE)
    truth = random_history(store, source, steps=12, seed=9)
    history = store._history
    assert history.log_floor > 0
    for since in range(store.version + 1):
        delta = store.changes_since(since)
        cache = LabelCache(3, 2, SHAPE)
        cache.apply(store.changes_since(0))
        changed = {(s, i) for s, i in zip(delta.slot.tolist(), delta.sample_index.tolist())}
        expected = {(s, i) for s in range(2) for i in range(3) if history.last_changed[s, i] > since}
        assert changed == expected and len(changed) == len(delta)
    for (slot, i), label in truth.items():
        np.testing.assert_array_equal(cache.current(slot, np.array([i]), source[i : i + 1])[0], label)
