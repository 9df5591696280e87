"""Helpers shared by the label tests: synthetic (source, corrected) label pairs, random histories, store equality.

A plain module (imported relatively: tests/labels is a package) rather than
fixtures, so that the tests call them as ordinary functions.
"""

from __future__ import annotations

import numpy as np

from aide_ray.labels import LabelCache, LabelStore

SHAPE = (24, 32)


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    """(H, W) uint8 mask of the disc of centre (cy, cx) and radius r."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)


def make_pairs(n: int, shape: tuple[int, int] = SHAPE, seed: int = 0, classes: int = 2):
    """n (source, corrected) label pairs; each correction changes the class inside a small disc."""
    rng = np.random.default_rng(seed)
    h, w = shape
    source = np.stack([disc(shape, h / 2, w / 2, rng.uniform(1, max(2, min(h, w) / 3))) for _ in range(n)])
    if classes > 2:
        source = source * rng.integers(1, classes, size=(n, 1, 1)).astype(np.uint8)
    masks = source.copy()
    for i in range(n):
        blob = disc(shape, rng.integers(0, h), rng.integers(0, w), rng.uniform(1, 4)).astype(bool)
        masks[i][blob] = (masks[i][blob] + rng.integers(1, classes)) % classes
    return source, masks


def random_history(store: LabelStore, source: np.ndarray, steps: int, seed: int, cache: LabelCache | None = None):
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


def assert_same_store(a: LabelStore, b: LabelStore, source: np.ndarray) -> None:
    """Same version, statistics, labels and entries."""
    assert a.version == b.version and a.stats() == b.stats()
    all_idx = np.arange(a.num_samples)
    for slot in range(a.label_slots):
        np.testing.assert_array_equal(a.current(slot, all_idx, source), b.current(slot, all_idx, source))
    da, db = a.changes_since(0), b.changes_since(0)
    assert sorted(zip(da.slot.tolist(), da.sample_index.tolist(), da.packed)) == sorted(
        zip(db.slot.tolist(), db.sample_index.tolist(), db.packed)
    )

