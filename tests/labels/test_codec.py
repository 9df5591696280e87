"""Tests of aide_ray.labels.codec: XOR-difference entries round-trip and stay small."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.labels import LabelStore, apply_difference, encode_differences

from .helpers import disc, make_pairs


@pytest.mark.parametrize("shape", [(24, 32), (17, 27), (1, 8)])
@pytest.mark.parametrize("classes", [2, 4])
def test_encode_then_apply_reproduces_labels(shape, classes):
    source, masks = make_pairs(12, shape, seed=3, classes=classes)
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
    source = disc((256, 256), 128, 128, 60)
    near = source.copy()
    near[60:63, 100:103] ^= 1  # 9 pixels flipped
    blob = source.copy()
    blob[disc((256, 256), 70, 128, 40).astype(bool)] = 1  # a large blob added
    near_entry, blob_entry = encode_differences(np.stack([near, blob]), np.stack([source, source]))
    # 9-byte box header + 3 x 8 bits; the raw label is 65536 bytes, packed 8192.
    assert len(near_entry) <= 16
    assert blob_entry[0] == 3 and len(blob_entry) < 300  # bit-packed, then zlib (box 52 x 88 px = 572 bytes packed)
    store = LabelStore(4, 1, (256, 256))
    store.commit(0, 0, np.array([1]), near[None], source[None])
    assert store.stats()["stored_bytes"] == len(near_entry)
