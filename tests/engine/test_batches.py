"""Row batches become method batches: corrections overlaid per slot, in the batch's flipped frame."""

from __future__ import annotations

import numpy as np
import torch

from aide_ray.data.augment import flip_rows
from aide_ray.engine.batches import corrected_rows, current_labels, to_batch
from aide_ray.labels import LabelCache, LabelStore


def test_corrections_are_overlaid_in_the_flipped_frame():
    n, size = 3, 4
    source = np.zeros((n, size, size), np.uint8)
    source[:, 0, :2] = 1  # top-left stripe
    store = LabelStore(n, 2, (size, size))
    corrected = np.zeros((1, size, size), np.uint8)
    corrected[0, :, 0] = 1  # left column, in the unflipped frame
    store.commit(0, 1, np.array([1]), corrected, source[1:2])  # slot 1 of sample 1
    cache = LabelCache(n, 2, (size, size))
    cache.apply(store.changes_since(0))
    flip_h = np.array([False, True, True])
    flip_v = np.array([False, False, True])
    raw = {"label": flip_rows(source, flip_h, flip_v), "sample_index": np.arange(n), "flip_h": flip_h,
           "flip_v": flip_v, "image": np.zeros((n, 1, size, size), np.float32), "has_label": np.ones(n, bool),
           "hq": np.zeros(n, bool)}
    labels = current_labels(cache, 2, raw)
    assert labels.shape == (n, 2, size, size)
    np.testing.assert_array_equal(labels[:, 0], raw["label"])  # slot 0 has no correction
    np.testing.assert_array_equal(labels[1, 1], corrected[0, :, ::-1])  # flipped like its batch row
    np.testing.assert_array_equal(labels[2, 1], raw["label"][2])
    batch = to_batch(raw, cache, 2, torch.device("cpu"))
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (n, 2, size, size)
    assert corrected_rows(batch, raw) == 1


def test_without_corrections_every_slot_is_the_source():
    raw = {"label": np.ones((2, 2, 2), np.uint8), "sample_index": np.arange(2), "flip_h": np.zeros(2, bool),
           "flip_v": np.zeros(2, bool)}
    labels = current_labels(LabelCache(2, 2, (2, 2)), 2, raw)
    assert (labels == 1).all() and labels.shape == (2, 2, 2, 2)
