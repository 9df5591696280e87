"""Tests of aide_ray.runs.checkpoint: resuming picks the newest checkpoint that verifies, and says what it skipped."""

from __future__ import annotations

import json

from aide_ray.runs.checkpoint import choose_checkpoint, newest_valid_checkpoint, seal_checkpoint
from aide_ray.runs.folder import FILES_MANIFEST, METRICS_FILE, STATE_FILE


def _checkpoint(run, name, epoch):
    folder = run / name
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(b"state of epoch %d" % epoch * 100)
    (folder / METRICS_FILE).write_text(json.dumps({"epoch": epoch, "val_dice": 0.5}))
    seal_checkpoint(folder)
    return folder


def test_the_newest_checkpoint_that_verifies_is_chosen_and_newer_ones_are_named(tmp_path):
    run = tmp_path / "run"
    assert newest_valid_checkpoint(run).path is None and newest_valid_checkpoint(run).skipped == ()
    old = _checkpoint(run, "checkpoint_2026-01-01_10-00-00.000000", 0)
    good = _checkpoint(run, "checkpoint_2026-01-01_10-00-05.000000", 1)
    truncated = _checkpoint(run, "checkpoint_2026-01-01_10-00-09.000000", 2)
    unfinished = _checkpoint(run, "checkpoint_2026-01-01_10-00-12.000000", 3)
    state = truncated / STATE_FILE
    state.write_bytes(state.read_bytes()[:50])
    (unfinished / FILES_MANIFEST).unlink()

    choice = newest_valid_checkpoint(run)
    assert (choice.path, choice.epoch) == (good, 1)
    assert [folder for folder, _ in choice.skipped] == [unfinished, truncated]
    assert f"{FILES_MANIFEST} is missing" in choice.skipped[0][1]
    assert "has 50 bytes, 1600 were written: truncated or changed" in choice.skipped[1][1]

    # A changed byte of the same size is caught by the SHA-256.
    (good / METRICS_FILE).write_text((good / METRICS_FILE).read_text().replace("0.5", "0.7"))
    choice = choose_checkpoint([good, old])
    assert choice.path == old and "does not match the SHA-256" in choice.skipped[0][1]
    assert choose_checkpoint([truncated]).path is None
