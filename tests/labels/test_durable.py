"""Tests of aide_ray.labels.durable: a restart snapshot is adopted only by the run that wrote it."""

from __future__ import annotations

import io

import numpy as np

from aide_ray.labels import LabelStore

from .helpers import SHAPE, assert_same_store, make_pairs

N = 8


def test_a_new_run_ignores_the_snapshot_a_killed_run_left(tmp_path, capsys):
    """What a driver killed before its first checkpoint leaves: label_store.latest.npz and pending
    reports. The next run in that folder (another token) starts empty and says so."""
    source, masks = make_pairs(N, seed=31)
    path = tmp_path / "label_store.latest.npz"
    killed = LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="killed")
    killed.commit(0, 0, np.arange(3), masks[:3], source[:3])
    killed.report_candidates(1, 0, np.array([4, 5]), np.array([0.1, 0.2], np.float32))
    assert killed.version == 1

    # The same run (an actor restart) reloads it.
    assert_same_store(killed, LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="killed"), source)
    capsys.readouterr()

    fresh = LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="next")
    out = capsys.readouterr().out
    assert f"ignoring {path} (written by run killed, not by this run next)" in out
    assert fresh.version == 0 and fresh.stats()["corrected"] == [0, 0]
    np.testing.assert_array_equal(fresh.select(1, 0, 2), [])  # the killed run's reports are gone too
    # The file now belongs to the new run: its own restart keeps its (empty) state, silently.
    fresh.commit(0, 1, np.array([7]), masks[[7]], source[[7]])
    restarted = LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="next")
    assert capsys.readouterr().out == ""
    assert_same_store(fresh, restarted, source)
    assert restarted.stats()["corrected"] == [0, 1]


def test_an_old_snapshot_without_token_or_unreadable_is_ignored(tmp_path, capsys):
    source, masks = make_pairs(N, seed=32)
    path = tmp_path / "label_store.latest.npz"
    old = LabelStore(N, 2, SHAPE, snapshot_path=path)  # no token: tools and older runs
    old.commit(0, 0, np.arange(2), masks[:2], source[:2])
    assert LabelStore(N, 2, SHAPE, snapshot_path=path).version == 1  # without a token anything loads
    assert LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="t").version == 0
    assert "written by run (no token)" in capsys.readouterr().out
    path.write_bytes(b"garbage")
    assert LabelStore(N, 2, SHAPE, snapshot_path=path, run_token="u").version == 0
    assert "an unreadable file" in capsys.readouterr().out


def test_checkpoint_snapshots_carry_the_token_and_restore_into_any_run(tmp_path):
    source, masks = make_pairs(N, seed=33)
    store = LabelStore(N, 2, SHAPE, run_token="a")
    store.commit(0, 0, np.arange(2), masks[:2], source[:2])
    data = store.snapshot_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert str(npz["run_token"]) == "a"
    # A resumed run (another token) restores the checkpoint's labels: they are its source of truth.
    other = LabelStore(N, 2, SHAPE, snapshot_path=tmp_path / "latest.npz", run_token="b")
    other.load_snapshot_bytes(data)
    assert other.stats()["corrected"] == [2, 0]
    assert LabelStore(N, 2, SHAPE, snapshot_path=tmp_path / "latest.npz", run_token="b").stats()["corrected"] == [2, 0]
