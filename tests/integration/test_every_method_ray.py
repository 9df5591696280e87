"""Every method of issues 14 and 15, and the earlier baselines, train through the Ray backend: one epoch
each, 2 workers, ONE fit.

Each ``TorchTrainer.fit()`` costs ~20 s of fixed overhead, so the 22 configs do not get a fit each: one
worker group trains them in turn, each through the production path, ``train_loop`` -> ``run_epoch`` on a
:class:`RayBackend` (DDP over gloo, ``ray.train.report`` with the checkpoint rank 0 writes), fed by the
production Ray Data pipeline of its data kind (``build_datasets`` on tiny noisy-label, semi-supervised or
scribble shards ingested from SimpleITK volumes, split by ``ExactSplits``) and that kind's label-store actor.
The test-only backend differs from the production one in two things: each config reads its kind's datasets
(``RayBackend(dataset_prefix=...)``), and each starts fresh (Ray's latest checkpoint is the previous
config's, not one to restore); it also counts what the train pass handed over. The local backend trains
the same methods in tests/methods/test_baselines.py and test_scribble_methods.py. The one full
``run_training`` of a method other than AIDE (the run folder, its best checkpoint, shards with unlabelled
rows) is test_train_ray.py's ``test_a_semi_supervised_baseline_trains_through_ray``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from aide_ray.config import from_dict, load_config
from aide_ray.data.ingest import ingest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.distributed.backend import RESTORE_KEY, RUN_DIR_KEY, RayBackend
from aide_ray.distributed.console import quiet_loggers
from aide_ray.distributed.data_pipeline import build_datasets
from aide_ray.distributed.label_actor import create_label_store_actor
from aide_ray.distributed.trainer import ExactSplits, labelled_count, quiet_ray_data, scaling_config
from aide_ray.engine.loop import train_loop
from aide_ray.engine.run_setup import prepare_run
from aide_ray.label_values import UNANNOTATED
from aide_ray.methods.registry import create_method, method_class
from aide_ray.runs.checkpoint import load_state
from aide_ray.runs.folder import HISTORY_FILE, METRICS_FILE, checkpoint_dirs

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = Preprocessing(target_spacing=None, size=32, normalize="zscore")
WORKERS = 2

# (run name, data kind, method, overrides): the distinctive part of each method runs in epoch 0 (no ramps,
# no warm-up). The run name tells a method's configs apart (co-teaching's two granularities).
RUNS: list[tuple[str, str, str, list[str]]] = [
    ("supervised", "noisy", "supervised", []),
    ("gce", "noisy", "gce", []),
    ("nrdice", "noisy", "nrdice", []),
    ("mae", "noisy", "mae", []),
    ("clslsr", "noisy", "clslsr", ["clslsr.warmup_epochs=0"]),
    ("trinet", "noisy", "trinet", ["trinet.ramp_epochs=0"]),
    ("dast", "noisy", "dast", ["dast.ramp_epochs=0", "dast.queue_length=2"]),
    ("coteaching", "noisy", "coteaching", ["coteaching.ramp_epochs=0"]),  # image level (the default)
    ("coteaching_pixel", "noisy", "coteaching", ["coteaching.pixel_level=true", "coteaching.ramp_epochs=0"]),
    ("meanteacher", "semi", "meanteacher", ["meanteacher.ramp_epochs=0"]),
    ("cps", "semi", "cps", ["cps.ramp_epochs=0"]),
    ("entmin", "semi", "entmin", ["entmin.ramp_epochs=0"]),
    ("uamt", "semi", "uamt", ["uamt.ramp_epochs=0", "uamt.num_passes=2"]),
    ("urpc", "semi", "urpc", ["urpc.ramp_epochs=0"]),
    ("cct", "semi", "cct", ["cct.ramp_epochs=0"]),
    ("pce", "scribble", "pce", []),
    ("scribble_entmin", "scribble", "scribble_entmin", ["scribble_entmin.ramp_epochs=0"]),
    ("tv", "scribble", "tv", ["tv.ramp_epochs=0"]),
    ("mumford_shah", "scribble", "mumford_shah", ["mumford_shah.ramp_epochs=0"]),
    ("gated_crf", "scribble", "gated_crf", ["gated_crf.ramp_epochs=0"]),
    ("ustm", "scribble", "ustm", ["ustm.ramp_epochs=0", "ustm.num_passes=2"]),
    ("dmpls", "scribble", "dmpls", []),
]


@pytest.fixture(scope="module")
def tiny_scribble_shards(tiny_manifest, tmp_path_factory) -> Path:
    """tiny_manifest with every train label a scribble drawn from its mask (val and test keep full masks)."""
    scribbles = corrupt_manifest(tiny_manifest, tmp_path_factory.mktemp("tiny") / "scribbles", "scribbles", seed=0)
    return ingest(scribbles, tmp_path_factory.mktemp("tiny") / "scribble_shards", TINY, progress=False)


class _OneMethodOfMany(RayBackend):
    """The Ray backend of one config among several trained in turn by one worker group."""

    def __init__(self, loop_config: dict[str, Any], cfg: Any, kind: str) -> None:
        super().__init__(loop_config, cfg, dataset_prefix=f"{kind}_")
        self.seen = {"steps": 0, "rows": 0, "unlabelled_rows": 0, "unannotated_pixels": 0}

    def _candidates(self) -> list:
        # Nothing to restore: Ray's latest checkpoint is the previous config's. The rest of the
        # production start stays: rank 0 decides (nothing), tells the others and empties the label store.
        return []

    def batches(self, split, batch_size, *, epoch) -> Iterator[dict[str, np.ndarray]]:
        for raw in super().batches(split, batch_size, epoch=epoch):
            if split == "train":
                labelled = np.asarray(raw["has_label"], bool)
                self.seen["steps"] += 1
                self.seen["rows"] += len(labelled)
                self.seen["unlabelled_rows"] += int((~labelled).sum())
                self.seen["unannotated_pixels"] += int((np.asarray(raw["label"])[labelled] == UNANNOTATED).sum())
            yield raw


def _every_method_per_worker(loop_config: dict[str, Any]) -> None:
    """Each Ray Train worker: ``train_loop`` for every config of ``loop_config["runs"]`` in turn, as
    ``train_loop_per_worker`` does for one; then what it saw into ``<probe_dir>/<run name>.rank<r>.json``."""
    torch.set_num_threads(int(loop_config["torch_threads"]))
    quiet_loggers(False)
    for kind, config in loop_config["runs"]:
        cfg = from_dict(config, source="test config")
        data = loop_config["kinds"][kind]
        backend = _OneMethodOfMany({**loop_config, "label_store": data["label_store"], "has_val": data["has_val"]},
                                   cfg, kind)
        history = train_loop(cfg, data["dataset_info"], backend, verbose=False)
        probe = {"rank": backend.rank, "world_size": backend.world_size, "epochs": len(history), **backend.seen}
        Path(loop_config["probe_dir"], f"{cfg.run.name}.rank{backend.rank}.json").write_text(json.dumps(probe))


def _fit_every_method(configs: dict[str, Any], setups: dict[str, Any], storage: Path, probe_dir: Path) -> None:
    """One TorchTrainer fit on WORKERS workers for every config: each data kind's datasets and label store."""
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    quiet_ray_data(False)
    datasets, rows, kinds = {}, {}, {}
    for kind, setup in setups.items():
        cfg, info = setup.cfg, setup.info
        uses_unlabelled = {method_class(c.method).uses_unlabelled for k, c in configs.values() if k == kind}
        assert len(uses_unlabelled) == 1, f"the {kind} methods must want the same rows"
        parts = build_datasets(str(setup.shards), train_split=cfg.data.train_split, val_split=cfg.data.val_split,
                               labelled_only=not uses_unlabelled.pop(), info=info,
                               unlabelled_fraction=cfg.data.unlabelled_fraction, flip=cfg.data.flip_augment,
                               max_retries=cfg.data.max_retries, shuffle=cfg.data.shuffle)
        datasets.update({f"{kind}_{split}": ds for split, ds in parts.items()})
        counts = info["counts"]["split_label_kind"]
        rows[f"{kind}_score"] = labelled_count(counts.get(cfg.data.train_split, {}))
        rows[f"{kind}_val"] = labelled_count(counts.get(cfg.data.val_split, {}))
        slots = {method_class(c.method).label_slots for k, c in configs.values() if k == kind}
        assert slots == {1}
        kinds[kind] = {"dataset_info": info, "has_val": setup.has_val,
                       "label_store": create_label_store_actor(int(info["num_samples"]), 1, tuple(info["shape"][1:]),
                                                               snapshot_path=None, run_token=kind)}
    base = next(iter(setups.values())).cfg
    loop_config = {"runs": [(kind, cfg.to_dict()) for kind, cfg in configs.values()], "kinds": kinds,
                   "torch_threads": 1, "probe_dir": str(probe_dir), RESTORE_KEY: None, RUN_DIR_KEY: None}
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # Ray's workers cannot import this test module
    try:
        TorchTrainer(
            _every_method_per_worker,
            train_loop_config=loop_config,
            scaling_config=scaling_config(base),
            dataset_config=ExactSplits(rows),
            run_config=ray.train.RunConfig(name="every-method", storage_path=str(storage),
                                           failure_config=ray.train.FailureConfig(max_failures=0),
                                           logging_config=ray.train.LoggingConfig(log_level="WARNING")),
            datasets=datasets,
        ).fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)


def _changed_nets(method_name: str, cfg: Any, in_channels: int, state: dict[str, Any]) -> dict[str, bool]:
    """Per net: whether any of its parameters differs from the seed's initialisation (``train_loop``'s build)."""
    method = create_method(cfg, in_channels)
    torch.manual_seed(cfg.seed)
    fresh = method.build_nets()
    assert set(state["nets"]) == set(fresh), method_name
    return {name: any(not torch.equal(param, state["nets"][name][key]) for key, param in net.named_parameters())
            for name, net in fresh.items()}


def _check_method_terms(method: str, cfg: Any, row: pd.Series) -> None:
    """What shows that the method's own part ran, from its metrics row (averaged over both workers' steps)."""
    if method in ("coteaching", "trinet"):
        assert row["forget_rate"] == pytest.approx(0.2)
        nets = method_class(method).net_names
        # Each net trained on its small-loss share (trinet: where its peers also agree), never on all.
        assert all(row[f"kept_{name}"] < 1.0 for name in nets) and row.filter(like="kept_").sum() > 0, \
            row.filter(like="kept_")
    if method == "coteaching":
        # Train batches are full (drop_last, batch_size=4) and every noisy row is labelled: each step keeps
        # floor(0.8 n + 0.5) of its n = 4 rows (image level: 3 of 4) or of its 4 x H x W pixels (pixel level).
        share = 0.8 if cfg.options_of("coteaching").pixel_level else 0.75
        assert row["kept_net1"] == pytest.approx(share, abs=1e-3) and row["kept_net2"] == pytest.approx(share, abs=1e-3), \
            (share, row.filter(like="kept_"))
    elif method == "meanteacher":
        assert row["cons_weight"] == pytest.approx(cfg.options_of("meanteacher").consistency_weight)  # no ramp
    elif method == "cps":
        assert row["pseudo_weight"] == pytest.approx(cfg.options_of("cps").consistency_weight)  # no ramp
        for name in ("net1", "net2"):  # each net learnt from its twin's pseudo-labels
            assert math.isfinite(row[f"loss_pseudo_{name}"]) and row[f"loss_pseudo_{name}"] > 0, name
    elif method == "clslsr":
        assert row["phase"] == 0 and 0.0 <= row["flagged_pixels"] <= 1.0
    elif method == "dast":
        assert row["ramp"] == 1.0 and row["severe_share"] > 0  # the score queue filled and ranked rows
    if method_class(method).uses_unlabelled and method != "cps":  # cps records no row counts: the probes show them
        assert row["unlabelled_rows"] > 0
        assert math.isfinite(row["loss_entropy" if method == "entmin" else "loss_cons"])
    if method in ("uamt", "ustm"):
        assert 0.0 <= row["certain_share"] <= 1.0 and math.isfinite(row["loss_cons"])
    if "annotated_share" in row:  # every scribble method
        assert 0.0 < row["annotated_share"] < 1.0


@pytest.mark.timeout(480)
def test_every_method_trains_one_epoch_on_two_ray_workers(ray_cluster, tiny_shards, tiny_semi_shards,
                                                          tiny_scribble_shards, tmp_path):
    shards = {"noisy": tiny_shards, "semi": tiny_semi_shards, "scribble": tiny_scribble_shards}
    configs, setups = {}, {}
    for name, kind, method, overrides in RUNS:
        cfg = load_config(None, [
            f"method={method}", f"data.shards={shards[kind]}", f"run.storage_path={tmp_path / 'runs'}",
            f"run.name={name}", f"workers={WORKERS}", "cpus_per_worker=1", "batch_size=4", "model.base_width=4",
            "optim.lr=0.01", "epochs=1", *overrides])
        setup = prepare_run(cfg)  # the production checks: shards verify, the method can train on this kind
        configs[name] = (kind, setup.cfg)
        setups.setdefault(kind, setup)
    assert len(configs) == len(RUNS) == 22
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    _fit_every_method(configs, setups, tmp_path, probe_dir)

    folders = checkpoint_dirs(tmp_path / "every-method")
    checkpoints = {(state := load_state(folder))["config"]["run"]["name"]: (Path(folder), state)  # verified
                   for folder in folders}
    assert len(folders) == len(configs) and set(checkpoints) == set(configs), "one checkpoint per config"
    for name, (kind, cfg) in configs.items():
        method = cfg.method
        probes = [json.loads((probe_dir / f"{name}.rank{rank}.json").read_text()) for rank in range(WORKERS)]
        for probe in probes:  # train_loop returned on both workers, after a train pass with steps on each
            assert probe["world_size"] == WORKERS and probe["epochs"] == 1 and probe["steps"] > 0, (name, probe)
        if kind == "semi":
            assert sum(p["unlabelled_rows"] for p in probes) > 0, name
        if kind == "scribble":  # the unannotated pixels (255) reached the batches on both workers
            assert all(p["unannotated_pixels"] > 0 for p in probes), (name, probes)
        else:
            assert all(p["unannotated_pixels"] == 0 for p in probes), (name, probes)

        folder, state = checkpoints[name]
        assert state["method"] == method, (name, state["method"])
        history = pd.read_csv(folder / HISTORY_FILE)
        assert len(history) == 1 and (folder / METRICS_FILE).is_file(), name
        row = history.iloc[0]
        assert row["epoch"] == 0 and row["workers"] == WORKERS, (name, row["workers"])
        assert row["label_version_at_start"] == 0 and row["label_digest_mismatch"] == 0, name
        losses = row[[c for c in history.columns if c.startswith("loss")]]
        assert np.isfinite(losses.to_numpy(float)).all() and row["loss"] > 0, (name, losses.to_dict())
        assert 0.0 <= row["train_dice"] <= 1.0 and 0.0 <= row["val_dice"] <= 1.0, name
        assert row["slices_per_s"] > 0, name
        _check_method_terms(method, cfg, row)
        # Every net moved: the trained ones by their optimiser (trinet's third net, dast's noisy branch,
        # the twins of co-teaching and cps), the teachers of meanteacher, uamt and ustm by the EMA of their
        # student, which they average rather than copy.
        changed = _changed_nets(method, cfg, int(state["in_channels"]), state)
        assert all(changed.values()), (name, changed)
        if "teacher" in state["nets"]:
            teacher, student = state["nets"]["teacher"], state["nets"]["student"]
            assert teacher.keys() == student.keys(), name
            assert any(not torch.equal(teacher[key], student[key]) for key in teacher), name
