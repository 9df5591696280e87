"""Scribble labels in the label store: UNANNOTATED (255) survives the codec, the store, the cache and snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelCache, LabelStore, apply_difference, encode_differences

from .helpers import disc


def _scribbles(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """n scribble labels: 255 everywhere but a foreground and a background stroke."""
    rng = np.random.default_rng(seed)
    out = np.full((n, *shape), UNANNOTATED, np.uint8)
    for i in range(n):
        y = int(rng.integers(1, shape[0] - 1))
        out[i, y, 1:-1] = 1
        out[i, 0, :] = 0
    return out


@pytest.mark.parametrize("shape", [(24, 32), (17, 27)])  # 8-pixel words and the per-pixel path
def test_codec_round_trips_scribbles_corrected_partly_and_fully(shape):
    source = _scribbles(4, shape)
    full = disc(shape, shape[0] / 2, shape[1] / 2, 5)
    masks = source.copy()
    masks[1] = full  # AIDE's correction: a full prediction replaces the scribble
    masks[2][disc(shape, 3, 3, 2).astype(bool)] = 1  # a partial change that keeps 255 elsewhere
    masks[3][0, :4] = UNANNOTATED  # a pixel becomes unannotated again
    entries = encode_differences(masks, source)
    assert entries[0] is None
    for i, entry in enumerate(entries[1:], start=1):
        label = apply_difference(source[i].copy(), entry)
        np.testing.assert_array_equal(label, masks[i])
    assert (masks[2] == UNANNOTATED).any()


def test_store_cache_and_snapshot_keep_255(tmp_path):
    shape = (16, 24)
    source = _scribbles(5, shape, seed=1)
    store = LabelStore(5, 2, shape)
    corrected = source[[1, 3]].copy()
    corrected[0] = disc(shape, 8, 12, 4)  # a full label
    corrected[1][5, 5] = 0  # one more annotated pixel, 255 elsewhere kept
    store.commit(0, 1, np.array([1, 3]), corrected, source[[1, 3]])

    def check(current_of):
        np.testing.assert_array_equal(current_of(0, np.arange(5), source), source)
        labels = current_of(1, np.arange(5), source)
        np.testing.assert_array_equal(labels[[0, 2, 4]], source[[0, 2, 4]])
        np.testing.assert_array_equal(labels[[1, 3]], corrected)
        assert (labels[3] == UNANNOTATED).sum() == (source[3] == UNANNOTATED).sum() - 1

    check(store.current)
    cache = LabelCache(5, 2, shape)
    cache.apply(store.changes_since(0))
    check(cache.current)
    store.save_snapshot(tmp_path / "labels.npz")
    check(LabelStore.from_snapshot_file(tmp_path / "labels.npz").current)
    check(LabelStore.from_snapshot_bytes(store.snapshot_bytes()).current)
