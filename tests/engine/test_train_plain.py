"""jobs/train_plain.py: the plain loop writes a run folder that prediction reads like a Ray run's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import read_slices_local
from aide_ray.engine.checkpoint import load_checkpoint
from aide_ray.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _train_plain():
    spec = importlib.util.spec_from_file_location("train_plain", REPO / "jobs" / "train_plain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    raw = make_demo_data(tmp_path_factory.mktemp("plain") / "raw", cases=6, slices=4, size=32, seed=1)
    return ingest(raw, tmp_path_factory.mktemp("plain") / "shards",
                  Preprocessing(target_spacing=None, size=32, normalize="zscore"), progress=False)


def test_plain_run_folder_holds_the_best_nets_and_corrected_labels(shards, tmp_path):
    config = REPO / "jobs" / "experiments" / "noisy" / "aide.yaml"
    run_dir = _train_plain().main(["--config", str(config), f"data.shards={shards}", "epochs=2", "batch_size=4",
                                   "aide.warmup_epochs=1", "aide.num_augmentations=2",
                                   f"run.storage_path={tmp_path}", "run.name=plain"])
    assert run_dir == tmp_path / "plain"
    history = pd.read_csv(run_dir / "metrics.csv")
    assert list(history["epoch"]) == [0, 1] and history["val_dice"].notna().all()
    loaded = load_checkpoint(run_dir)  # through best_checkpoint.txt, as `aide-ray predict` does
    assert loaded.config.method == "aide" and set(loaded.nets) == {"net1", "net2"}
    best = int(history["val_dice"].idxmax())
    assert loaded.epoch == best
    assert loaded.dataset_info["shape"] == [1, 32, 32]
    rows = read_slices_local(shards, split="train")
    labels = np.load(run_dir / "final_labels.npz")
    np.testing.assert_array_equal(labels["sample_index"], rows["sample_index"])
    assert labels["labels"].shape == (len(rows["label"]), 2, 32, 32)
    # The update after epoch 0 replaced some labels with the twin's predictions.
    changed = (labels["labels"] != rows["label"][:, None]).reshape(len(rows["label"]), -1).any(1)
    assert changed.any() == (history["labels_corrected"].sum() > 0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    with pytest.raises(ConfigError, match="already exists"):
        _train_plain().main(["--config", str(config), f"data.shards={shards}", f"run.storage_path={tmp_path}",
                             "run.name=plain"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_use_gpu_without_cuda_is_a_config_error(shards, tmp_path):
    with pytest.raises(ConfigError, match="use_gpu"):
        _train_plain().main(["--config", str(REPO / "jobs" / "experiments" / "noisy" / "supervised_noisy.yaml"),
                             f"data.shards={shards}", "use_gpu=true", f"run.storage_path={tmp_path}", "run.name=g"])


def test_init_from_starts_both_twins_from_one_supervised_net(shards, tmp_path):
    from aide_ray.config import load_config
    from aide_ray.engine.checkpoint import CheckpointError, init_nets_from
    from aide_ray.engine.train import check_init_from
    from aide_ray.methods.registry import method_class

    experiments = REPO / "jobs" / "experiments" / "noisy"
    supervised = _train_plain().main(["--config", str(experiments / "supervised_noisy.yaml"), f"data.shards={shards}",
                                      "epochs=1", "batch_size=4", f"run.storage_path={tmp_path}", "run.name=sup"])
    cfg = load_config(experiments / "aide.yaml", [f"model.init_from={supervised}"])
    nets = method_class("aide")(cfg, 1).build_nets()
    assert init_nets_from(nets, supervised) == supervised / "checkpoint_best"
    reference = load_checkpoint(supervised).nets["net"].state_dict()
    for net in nets.values():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, reference[key])
    check_init_from(cfg, shards)  # what `aide-ray train` runs before starting Ray

    wider = method_class("aide")(cfg.replace(**{"model.base_width": 16}), 1).build_nets()
    with pytest.raises(CheckpointError, match="model.init_from: the nets of .* do not fit"):
        init_nets_from(wider, supervised)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        check_init_from(cfg.replace(**{"model.init_from": str(tmp_path)}), shards)

    # A run started that way records where its weights came from.
    run_dir = _train_plain().main(["--config", str(experiments / "aide.yaml"), f"data.shards={shards}", "epochs=1",
                                   "batch_size=4", "aide.num_augmentations=2", f"model.init_from={supervised}",
                                   f"run.storage_path={tmp_path}", "run.name=aide_init"])
    assert load_checkpoint(run_dir).config.model.init_from == str(supervised)


def test_label_scores_hold_the_given_and_final_labels_against_hq(shards, tmp_path):
    from aide_ray.experiments import label_quality

    module = _train_plain()
    rows = read_slices_local(shards, split="train")
    final = np.repeat(rows["clean_label"][:, None], 2, axis=1)  # a perfect correction
    final[:, 1] = 0  # ... for net1's slot only; net2's labels erased
    path = tmp_path / "train_scores.csv"
    module.write_label_scores(path, rows, final, epochs=3)
    scores = pd.read_csv(path)
    assert sorted(scores["epoch"].unique()) == [0, 3] and len(scores) == 4 * len(rows["label"])
    # Read back as the results page does: epoch 1 = labels as given, epoch 4 = after the 3rd epoch.
    out = tmp_path / "exp"
    (out / "train" / "aide_s0").mkdir(parents=True)
    path.rename(out / "train" / "aide_s0" / "train_scores.csv")
    q = label_quality(out, "aide", 0).set_index("epoch")
    has = rows["has_clean_label"]
    given = [(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)) if (a.any() or b.any()) else 1.0
             for a, b in zip(rows["label"][has] > 0, rows["clean_label"][has] > 0)]
    assert q.loc[1, "net1"] == pytest.approx(np.mean(given)) and q.loc[1, "net2"] == pytest.approx(np.mean(given))
    assert q.loc[4, "net1"] == pytest.approx(1.0)
    assert q.loc[4, "net2"] == pytest.approx(np.mean([0.0 if c.any() else 1.0 for c in rows["clean_label"][has]]))
