"""Tests of stage + publish (aide_ray.labels.staging through LabelStore): an epoch's corrections apply
as one version or not at all, also when the store dies between applying and writing them."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.labels import LabelStore, encode_differences

from .helpers import SHAPE, assert_same_store, make_pairs

N = 12


class _Killed(Exception):
    """Stands for the actor process dying (os._exit) at the store's kill point."""


class _DiesOncePublishing(LabelStore):
    def _before_publish_is_written(self, epoch: int) -> None:
        raise _Killed(epoch)


def _stage_two_workers(store: LabelStore, source, masks, epoch: int = 0) -> dict[int, int]:
    """Worker 0 stages samples 0-2 into slot 1, worker 1 stages 3-4 into slot 1 and 5-6 into slot 0."""
    rows = {1: [0, 1, 2, 3, 4], 0: [5, 6]}
    store.stage(epoch, 1, np.array([0, 1, 2]), encode_differences(masks[[0, 1, 2]], source[[0, 1, 2]]))
    store.stage(epoch, 1, np.array([3, 4]), encode_differences(masks[[3, 4]], source[[3, 4]]))
    store.stage(epoch, 0, np.array([5, 6]), encode_differences(masks[[5, 6]], source[[5, 6]]))
    return {slot: len(idx) for slot, idx in rows.items()}


def test_publish_applies_every_staged_row_as_one_version_and_is_idempotent():
    source, masks = make_pairs(N, seed=21)
    store = LabelStore(N, 2, SHAPE)
    expected = _stage_two_workers(store, source, masks)
    # A retried staging call (same content) is kept once.
    assert store.stage(0, 1, np.array([3, 4]), encode_differences(masks[[3, 4]], source[[3, 4]])) == 2
    assert store.version == 0 and store.stats()["corrected"] == [0, 0]  # nothing visible before publish
    version = store.publish(0, expected)
    assert version == store.version == 1
    assert store.stats()["changed_per_epoch"] == {0: [2, 5]}
    np.testing.assert_array_equal(store.current(1, np.arange(5), source[:5]), masks[:5])
    delta = store.changes_since(0)
    assert sorted(zip(delta.slot.tolist(), delta.sample_index.tolist())) == [(0, 5), (0, 6), (1, 0), (1, 1), (1, 2),
                                                                            (1, 3), (1, 4)]
    assert store.publish(0, expected) == version and store.version == 1  # a retry changes nothing
    # The next epoch with nothing staged is still one (empty) version.
    assert store.publish(1, {}) == 2 and store.stats()["corrected"] == [2, 5]


def test_publish_with_a_lost_stage_applies_nothing():
    source, masks = make_pairs(N, seed=22)
    store = LabelStore(N, 2, SHAPE)
    expected = _stage_two_workers(store, source, masks)
    with pytest.raises(ValueError, match=r"publish\(epoch=0\): slot 1 must have 6 staged rows .* got 5; nothing"):
        store.publish(0, {0: 2, 1: 6})
    assert store.version == 0 and store.stats()["corrected"] == [0, 0]
    assert store.publish(0, expected) == 1  # the right count still publishes
    # A sample staged twice for one slot of an epoch is refused.
    store.stage(2, 0, np.array([1]), encode_differences(masks[[1]], source[[1]]))
    store.stage(2, 0, np.array([1, 2]), encode_differences(masks[[1, 2]], source[[1, 2]]))
    with pytest.raises(ValueError, match=r"epoch 2, slot 0: a sample must be staged once per epoch, got "
                                         r"sample_index \[1\]"):
        store.publish(2, {0: 3})
    with pytest.raises(ValueError, match="packed must hold 2 entries"):
        store.stage(3, 0, np.array([1, 2]), [None])


def test_a_store_killed_while_publishing_publishes_the_whole_epoch_after_restart(tmp_path):
    """The actor dies after applying the epoch in memory, before writing it: the restarted store
    (same arguments, as Ray restarts it) still holds every staged row, and the retried publish
    applies all of them, once."""
    source, masks = make_pairs(N, seed=23)
    path = tmp_path / "labels.npz"
    dying = _DiesOncePublishing(N, 2, SHAPE, snapshot_path=path, run_token="run-a")
    expected = _stage_two_workers(dying, source, masks)
    with pytest.raises(_Killed):
        dying.publish(0, expected)
    restarted = LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="run-a")
    assert restarted.version == 0  # what was applied in memory died with the process
    assert restarted.publish(0, expected) == 1
    assert restarted.stats()["changed_per_epoch"] == {0: [2, 5]}
    assert not list((tmp_path / "labels.npz.pending").glob("stage-*"))  # dropped once written
    # A store restarted after the publication was written answers a late retry with its version.
    again = LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="run-a")
    assert again.publish(0, expected) == 1
    assert_same_store(restarted, again, source)


def test_restoring_a_checkpoint_or_resetting_drops_staged_rows(tmp_path):
    source, masks = make_pairs(N, seed=24)
    path = tmp_path / "labels.npz"
    store = LabelStore(N, 2, SHAPE, snapshot_path=path)
    checkpoint = store.snapshot_bytes()
    _stage_two_workers(store, source, masks)
    store.load_snapshot_bytes(checkpoint)
    assert store.publish(0, {}) == 1 and store.stats()["corrected"] == [0, 0]
    _stage_two_workers(store, source, masks, epoch=1)
    store.commit(1, 0, np.array([9]), masks[[9]], source[[9]])
    store.reset()
    assert store.version == 0 and store.stats()["corrected"] == [0, 0]
    assert not list((tmp_path / "labels.npz.pending").glob("*.npz"))
    assert LabelStore(N, 2, SHAPE, snapshot_path=path).version == 0
