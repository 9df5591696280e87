"""The cluster section (placement by custom resources, elastic workers) and the exact dataset splits.

The config checks need no Ray; the split test streams the tiny data on the session's
local Ray. The runs on a multi-node cluster are in tests/integration/test_multinode.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from aide_ray.config import load_config
from aide_ray.data.shards import load_dataset_info
from aide_ray.distributed.data_pipeline import build_datasets
from aide_ray.distributed.trainer import ExactSplits, labelled_count, scaling_config
from aide_ray.exceptions import ConfigError


def test_a_fixed_run_keeps_rays_defaults():
    cfg = load_config(None, ["workers=3", "cpus_per_worker=2"])
    scaling = scaling_config(cfg)
    assert cfg.cluster.num_workers(cfg.workers) == 3 and not scaling.elasticity_enabled
    assert scaling.resources_per_worker == {"CPU": 2.0}


def test_elastic_workers_and_custom_resources_reach_rays_scaling_config():
    cfg = load_config(None, ["workers=4", "cluster.workers_min=2", "cluster.resize_interval_s=5",
                             "cluster.resources_per_worker={train_slot: 1}",
                             "cluster.label_store_resources={store: 1}"])
    scaling = scaling_config(cfg)
    assert scaling.elasticity_enabled and (scaling.min_workers, scaling.max_workers) == (2, 4)
    assert scaling.elastic_resize_monitor_interval_s == 5.0
    assert scaling.resources_per_worker == {"CPU": 1.0, "train_slot": 1.0}
    assert cfg.cluster.label_store_resources == {"store": 1.0}
    # workers_min == workers is a fixed run
    assert load_config(None, ["workers=2", "cluster.workers_min=2"]).cluster.num_workers(2) == 2


@pytest.mark.parametrize("overrides, message", [
    (["workers=2", "cluster.workers_min=3"], r"cluster.workers_min must be 0 \(a fixed number of workers\) or in "
                                             r"\[1, workers=2\], got 3"),
    (["cluster.workers_min=-1"], r"cluster.workers_min must be in \[0, inf\), got -1"),
    (["cluster.resize_interval_s=-1"], r"cluster.resize_interval_s must be in \[0, inf\)"),
    (["cluster.resources_per_worker={CPU: 1}"], r"cluster.resources_per_worker must be custom resources only.*"
                                                r"cpus_per_worker"),
    (["cluster.label_store_resources={memory: 100}"], r"cluster.label_store_resources must be custom resources"),
    (["cluster.resources_per_worker={train_slot: 0}"], r"cluster.resources_per_worker.train_slot must be a number "
                                                       r"> 0, got 0"),
    (["cluster.label_store_resources=[store]"], r"cluster.label_store_resources must be a mapping"),
    (["cluster.worker_min=1"], r"did you mean 'cluster.workers_min'"),
])
def test_bad_cluster_settings_fail_before_any_ray_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def _consume(iterators) -> list[np.ndarray]:
    """Every split's sample indices; the splits of one stream must be read at the same time."""
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(iterators)

    def read(rank: int) -> None:
        batches = list(iterators[rank].iter_batches(batch_size=4, batch_format="numpy"))
        out[rank] = np.concatenate([b["sample_index"] for b in batches]) if batches else np.zeros(0, np.int64)

    threads = [threading.Thread(target=read, args=(rank,)) for rank in range(len(iterators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


@pytest.mark.ray
def test_score_and_val_keep_every_row_when_the_world_size_does_not_divide_them(ray_cluster, tiny_shards):
    """Three workers, 16 training and 4 validation rows: Ray's equal split would drop 1 row of each
    (a sample never scored is never corrected); the train pass stays equal (DDP steps in lockstep)."""
    info = load_dataset_info(tiny_shards)
    kinds = info["counts"]["split_label_kind"]
    datasets = build_datasets(str(tiny_shards), train_split="train", val_split="val", labelled_only=True,
                              unlabelled_fraction=0.5, flip=False, max_retries=1, info=info, cache=True)
    splits = ExactSplits({"score": labelled_count(kinds["train"]), "val": labelled_count(kinds["val"])})
    world_size = 3
    for name, rows in (("score", kinds["train"]), ("val", kinds["val"]), ("train", kinds["train"])):
        n = labelled_count(rows)
        assert n % world_size, "the case this test is about"
        shards = _consume([part[name] for part in splits.configure({name: datasets[name]}, world_size, None, None)])
        seen = np.sort(np.concatenate(shards))
        assert len(np.unique(seen)) == len(seen), name  # no row twice
        if name == "train":
            assert [len(s) for s in shards] == [n // world_size] * world_size
        else:
            assert len(seen) == n, (name, [len(s) for s in shards])


@pytest.mark.ray
def test_one_worker_reads_every_dataset_whole_without_split_coordinators(ray_cluster, tiny_shards):
    """With one worker there is nothing to split: each dataset is read whole through ``ds.iterator()``
    (no SplitCoordinator actor per dataset, three processes fewer at a fit's start), every row once."""
    info = load_dataset_info(tiny_shards)
    kinds = info["counts"]["split_label_kind"]
    datasets = build_datasets(str(tiny_shards), train_split="train", val_split="val", labelled_only=True,
                              unlabelled_fraction=0.5, flip=False, max_retries=1, info=info, cache=True)
    splits = ExactSplits({"score": labelled_count(kinds["train"]), "val": labelled_count(kinds["val"])})
    (parts,) = splits.configure(datasets, 1, None, None)
    assert set(parts) == set(datasets)
    for name, iterator in parts.items():
        assert type(iterator).__name__ != "StreamSplitDataIterator", name
        (seen,) = _consume([iterator])
        rows = kinds["val"] if name == "val" else kinds["train"]
        assert len(seen) == len(np.unique(seen)) == labelled_count(rows), name
