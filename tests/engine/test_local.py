"""The local backend: its batches, its checkpoints, and whole runs in this process (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aide_ray.config import load_config
from aide_ray.data.shards import read_slices_local
from aide_ray.engine.local import LocalBackend, epoch_rows, train_local
from aide_ray.engine.relabel import carry_out
from aide_ray.engine.run_setup import prepare_run
from aide_ray.engine.scoring import LowestK
from aide_ray.exceptions import CheckpointError, ConfigError
from aide_ray.labels import LabelStore
from aide_ray.methods.aide import Aide
from aide_ray.methods.correction import CorrectionPlan
from aide_ray.runs.checkpoint import init_nets_from, load_checkpoint
from aide_ray.runs.folder import FILES_MANIFEST, LABEL_STORE_FILE, STATE_FILE, checkpoint_dirs


def _cfg(shards, storage, name, *extra):
    return load_config(None, [f"data.shards={shards}", f"run.storage_path={storage}", f"run.name={name}",
                              "batch_size=4", "model.base_width=4", "optim.lr=0.01", "aide.num_augmentations=2",
                              "aide.warmup_epochs=0", "aide.update_every=1", "aide.update_ratio=0.5", *extra])


def test_epoch_rows_mix_in_the_unlabelled_share():
    rng = np.random.default_rng(0)
    labelled, unlabelled = np.arange(6), np.arange(6, 9)
    rows = epoch_rows(labelled, unlabelled, 0.5, rng, shuffle=True)
    assert len(rows) == 12 and set(rows[rows < 6]) == set(range(6))  # 6 unlabelled draws from 3 rows
    assert epoch_rows(labelled, np.zeros(0, np.int64), 0.5, rng, shuffle=False).tolist() == list(range(6))


def test_local_batches_are_seeded_per_epoch_and_drop_the_last_incomplete(tiny_shards, tmp_path):
    setup = prepare_run(_cfg(tiny_shards, tmp_path, "b", "batch_size=5"))
    backend = LocalBackend(setup, LabelStore(int(setup.info["num_samples"]), 2, (32, 32)))
    n_train = int(setup.info["counts"]["split_label_kind"]["train"]["lq"]) + \
        int(setup.info["counts"]["split_label_kind"]["train"].get("hq", 0))
    first = list(backend.batches("train", 5, epoch=0))
    assert len(first) == n_train // 5 and all(len(b["sample_index"]) == 5 for b in first)
    again = list(backend.batches("train", 5, epoch=0))
    other = list(backend.batches("train", 5, epoch=1))
    assert all(np.array_equal(a["sample_index"], b["sample_index"]) for a, b in zip(first, again))
    assert not all(np.array_equal(a["sample_index"], b["sample_index"]) for a, b in zip(first, other))
    # A flipped row's image, label and clean label are flipped together.
    rows = read_slices_local(tiny_shards, split="train")
    for batch in first:
        for i, index in enumerate(batch["sample_index"]):
            j = int(np.flatnonzero(rows["sample_index"] == index)[0])
            label = rows["label"][j]
            label = label[:, ::-1] if batch["flip_h"][i] else label
            label = label[::-1] if batch["flip_v"][i] else label
            np.testing.assert_array_equal(batch["label"][i], label)
    score = list(backend.batches("score", 5, epoch=0))
    assert sum(len(b["sample_index"]) for b in score) == n_train
    assert not any(b["flip_h"].any() or b["flip_v"].any() for b in score)
    assert sum(len(b["sample_index"]) for b in backend.batches("val", 5, epoch=0)) > 0


def test_carry_out_writes_crossed_winners_and_skips_empty_predictions(tiny_shards, tmp_path):
    setup = prepare_run(_cfg(tiny_shards, tmp_path, "c"))
    store = LabelStore(10, 2, (2, 2))
    backend = LocalBackend(setup, store)
    source = np.zeros((4, 2, 2), np.uint8)
    pred0 = np.ones((4, 2, 2), np.uint8)
    pred0[1] = 0  # net1's prediction for sample 1 is empty
    pred1 = np.ones((4, 2, 2), np.uint8)
    candidates = [LowestK(2), LowestK(2)]
    candidates[0].add(np.arange(4), np.array([0.1, 0.0, 0.9, 0.8]), pred0, source)
    candidates[1].add(np.arange(4), np.array([0.9, 0.8, 0.2, 0.1]), pred1, source)
    done = carry_out(CorrectionPlan(ratio=0.5, targets=(1, 0)), candidates, backend, epoch=0, ks=[2, 2])
    # net1 (slot 0) picks samples 0, 1 -> written into slot 1, except the empty prediction of sample 1;
    # net2 (slot 1) picks samples 2, 3 -> written into slot 0.
    assert done.changed == [2, 1] and done.selected == [2, 2]
    assert store.stats()["corrected"] == [2, 1]
    assert store.version == 1  # the epoch's corrections are one version
    current0 = store.current(0, np.arange(4), source)
    current1 = store.current(1, np.arange(4), source)
    assert current0.reshape(4, -1).any(1).tolist() == [False, False, True, True]
    assert current1.reshape(4, -1).any(1).tolist() == [True, False, False, False]


def test_aide_run_folder_resume_and_kept_checkpoints(tiny_shards, tmp_path):
    cfg = _cfg(tiny_shards, tmp_path, "aide", "epochs=3", "run.checkpoints_to_keep=1")
    outcome = train_local(cfg)
    history = outcome.history
    assert list(history["epoch"]) == [0, 1, 2]
    for name in ("metrics.csv", "train_scores.csv", "correction_samples.npz", LABEL_STORE_FILE, "config.yaml",
                 "best_checkpoint.txt"):
        assert (outcome.run_dir / name).is_file(), name
    # One kept by score plus the latest; the pointer names the best by validation Dice.
    kept = checkpoint_dirs(outcome.run_dir)
    assert 1 <= len(kept) <= 2 and str(outcome.latest_checkpoint) == kept[-1]
    best_epoch = int(history["val_dice"].idxmax())
    assert load_checkpoint(outcome.run_dir).epoch == best_epoch
    store = LabelStore.from_snapshot_file(outcome.run_dir / LABEL_STORE_FILE)
    assert store.stats()["changed_cumulative"] == [int(history["relabelled_net1"].sum()),
                                                   int(history["relabelled_net2"].sum())]
    assert not [p for p in outcome.run_dir.iterdir() if p.name.startswith(".")]  # no temp folder left

    resumed = train_local(cfg.replace(epochs=4), resume=outcome.run_dir)
    assert list(resumed.history["epoch"]) == [0, 1, 2, 3]
    assert resumed.history.loc[3, "label_version_at_start"] == store.version
    pd.testing.assert_frame_equal(resumed.history.iloc[:3], history, check_dtype=False)


def test_resume_without_a_checkpoint_fails(tiny_shards, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume from"):
        train_local(_cfg(tiny_shards, tmp_path, "x", "epochs=1"), resume=tmp_path / "empty")
    with pytest.raises(CheckpointError, match="--resume must be a run folder, got .*absent: no such folder"):
        train_local(_cfg(tiny_shards, tmp_path, "x", "epochs=1"), resume=tmp_path / "absent")


def test_resume_skips_a_truncated_checkpoint_and_refuses_what_cannot_apply(tiny_shards, tmp_path, capsys):
    """Resume continues from the newest checkpoint that verifies and says so; a new run into the
    folder, a setting the checkpoint cannot take, or only broken checkpoints fail in one line."""
    cfg = _cfg(tiny_shards, tmp_path, "run", "epochs=2", "run.checkpoints_to_keep=2", "aide.update_every=100")
    outcome = train_local(cfg)
    first, latest = (Path(p) for p in checkpoint_dirs(outcome.run_dir))
    state = latest / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()

    with pytest.raises(ConfigError, match=r"run.name must name a new run folder, got 'run': .* already holds 2 "
                                          r"checkpoint\(s\); continue it with --resume .* or choose another run.name"):
        train_local(cfg.replace(epochs=3))
    with pytest.raises(ConfigError, match=r"--resume: model.base_width is 4 in the run's checkpoint, 8 now; "
                                          r"a checkpoint cannot change it"):
        train_local(cfg.replace(epochs=3, **{"model.base_width": 8}), resume=outcome.run_dir)
    with pytest.raises(ConfigError, match=r"epochs must be more than the 1 epoch\(s\) of .* to resume it, got 1"):
        train_local(cfg.replace(epochs=1), resume=outcome.run_dir)
    capsys.readouterr()

    resumed = train_local(cfg.replace(epochs=3), resume=outcome.run_dir)
    out = capsys.readouterr().out
    assert f"skipped {latest}: {state} has " in out and "truncated or changed" in out
    assert f"Resuming from {first} (epoch 1 done)" in out
    # Epoch 1 is trained again from the first checkpoint, never loaded from the truncated one.
    assert list(resumed.history["epoch"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(resumed.history.iloc[:1], outcome.history.iloc[:1], check_dtype=False)
    assert Path(resumed.best_checkpoint) != latest  # never named best either

    for folder in checkpoint_dirs(outcome.run_dir):
        (Path(folder) / FILES_MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"none of its \d checkpoint\(s\) verifies, so there is nothing to "
                                              r"resume from; newest checkpoint_.*files.json is missing"):
        train_local(cfg.replace(epochs=4), resume=outcome.run_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_use_gpu_without_cuda_is_a_config_error(tiny_shards, tmp_path):
    with pytest.raises(ConfigError, match="use_gpu"):
        train_local(_cfg(tiny_shards, tmp_path, "g", "use_gpu=true", "method=supervised"))


def test_init_from_starts_twins_from_one_or_two_supervised_nets(tiny_shards, tmp_path):
    sup_a = train_local(_cfg(tiny_shards, tmp_path, "sup_a", "epochs=1", "method=supervised")).run_dir
    sup_b = train_local(_cfg(tiny_shards, tmp_path, "sup_b", "epochs=1", "method=supervised", "seed=1")).run_dir
    reference = {run: load_checkpoint(run).nets["net"].state_dict() for run in (sup_a, sup_b)}
    cfg = _cfg(tiny_shards, tmp_path, "aide_init", "epochs=1", f"model.init_from=net1={sup_a},net2={sup_b}")
    nets = Aide.from_config(cfg, 1).build_nets()
    init_nets_from(nets, {"net1": sup_a, "net2": sup_b})
    for name, run in (("net1", sup_a), ("net2", sup_b)):
        for key, value in nets[name].state_dict().items():
            torch.testing.assert_close(value, reference[run][key])
    wider = cfg.replace(**{"model.base_width": 8})
    with pytest.raises(CheckpointError, match="model.init_from: the nets of .* do not fit"):
        train_local(wider.replace(**{"run.name": "wider"}))
    with pytest.raises(ConfigError, match="names net 'net3'"):
        train_local(cfg.replace(**{"model.init_from": f"net3={sup_a}"}))
    outcome = train_local(cfg)
    assert load_checkpoint(outcome.run_dir).config.model.init_from == f"net1={sup_a},net2={sup_b}"
