"""Tests of aide_ray.distributed.label_actor: the store actor restarts from its snapshot and loses nothing."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from aide_ray.distributed.label_actor import create_label_store_actor
from aide_ray.labels import LabelCache

SHAPE = (24, 32)


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)


def _pairs(n: int, shape: tuple[int, int] = SHAPE, seed: int = 0):
    """n binary (source, corrected) label pairs; each correction flips a small disc (as tests/labels/helpers.py)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    source = np.stack([_disc(shape, h / 2, w / 2, rng.uniform(1, max(2, min(h, w) / 3))) for _ in range(n)])
    masks = source.copy()
    for i in range(n):
        blob = _disc(shape, rng.integers(0, h), rng.integers(0, w), rng.uniform(1, 4)).astype(bool)
        masks[i][blob] = (masks[i][blob] + rng.integers(1, 2)) % 2
    return source, masks


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
