"""The engine's Ray Data pipelines: the cached and the streaming variant feed the same rows.

Cached (decoded once per run, kept in the object store) is what runs on data that
fits; streaming (Parquet read and decode every epoch) is the fallback. Both must
give every row once per pass, in a new order with new flips every pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.data.shards import load_dataset_info, read_slices_local
from aide_ray.distributed.data_pipeline import build_datasets, cache_fits, decoded_bytes, shuffle_buffer_rows

pytestmark = pytest.mark.ray


def _passes(dataset, n: int, batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(n):
        batches = list(dataset.iter_batches(batch_size=batch_size, batch_format="numpy",
                                            local_shuffle_buffer_size=shuffle_buffer_rows(batch_size)))
        out.append({key: np.concatenate([b[key] for b in batches]) for key in batches[0]})
    return out


def _build(shards, cache: bool, **kwargs):
    options = dict(train_split="train", val_split="val", labelled_only=True, unlabelled_fraction=0.5, flip=True,
                   max_retries=1)
    options.update(kwargs)
    return build_datasets(str(shards), info=load_dataset_info(shards), cache=cache, **options)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "streaming"])
def test_every_pass_has_every_row_in_a_new_order_with_new_flips(ray_cluster, tiny_shards, cache):
    local = read_slices_local(tiny_shards, split="train")
    datasets = _build(tiny_shards, cache)
    passes = _passes(datasets["train"], 3)
    for rows in passes:
        assert sorted(rows["sample_index"].tolist()) == sorted(local["sample_index"].tolist())
    orders = {tuple(rows["sample_index"].tolist()) for rows in passes}
    flips = {tuple(rows["flip_h"][np.argsort(rows["sample_index"])].tolist()) for rows in passes}
    assert len(orders) > 1, "every pass came in the same order"
    assert len(flips) > 1, "every pass had the same flips"

    # The flips are applied to the images: undoing them gives the stored slice back.
    rows = passes[0]
    position = {int(s): i for i, s in enumerate(local["sample_index"])}
    for i, sample in enumerate(rows["sample_index"]):
        image = rows["image"][i]
        if rows["flip_h"][i]:
            image = image[..., ::-1]
        if rows["flip_v"][i]:
            image = image[..., ::-1, :]
        np.testing.assert_array_equal(image, local["image"][position[int(sample)]])

    (score,) = _passes(datasets["score"], 1)
    assert not score["flip_h"].any() and not score["flip_v"].any()
    order = np.argsort(score["sample_index"])
    np.testing.assert_array_equal(score["image"][order], local["image"][np.argsort(local["sample_index"])])
    (val,) = _passes(datasets["val"], 1)
    assert len(val["sample_index"]) == len(read_slices_local(tiny_shards, split="val")["sample_index"])


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "streaming"])
def test_semi_supervised_train_rows_mix_in_the_unlabelled_share(ray_cluster, tiny_semi_shards, cache):
    counts = load_dataset_info(tiny_semi_shards)["counts"]["split_label_kind"]["train"]
    labelled = int(counts.get("hq", 0)) + int(counts.get("lq", 0))
    assert labelled and counts.get("none")
    datasets = _build(tiny_semi_shards, cache, labelled_only=False, val_split="")
    assert "val" not in datasets
    for rows in _passes(datasets["train"], 2):
        assert int(rows["has_label"].sum()) == labelled
        # fraction 0.5: as many unlabelled rows as labelled ones (here every unlabelled row once).
        assert int((~rows["has_label"]).sum()) == min(labelled, int(counts["none"]))
    (score,) = _passes(datasets["score"], 1)
    assert score["has_label"].all() and len(score["has_label"]) == labelled


def test_the_cache_is_used_only_when_it_fits_the_object_store(ray_cluster):
    assert decoded_bytes((2, 64, 64), 10) == 10 * (4 * 2 * 64 * 64 + 2 * 64 * 64 + 256)
    store = ray_cluster.cluster_resources()["object_store_memory"]
    assert cache_fits(int(0.2 * store))
    assert not cache_fits(int(0.3 * store))


def _operators(dataset) -> list[str]:
    """Names of the logical operators of a dataset's plan (Ray Data's own classes)."""
    names, todo = [], [dataset._logical_plan.dag]
    while todo:
        op = todo.pop()
        names.append(type(op).__name__)
        todo.extend(op.input_dependencies)
    return names


def test_the_streaming_pipeline_waits_for_no_whole_epoch_and_lists_the_files_once(ray_cluster, tiny_shards):
    """Streaming: no all-to-all barrier (``RandomizeBlocks`` would hold back the first batch until the whole
    epoch is read and decoded) and the V1 Parquet read (``Read``, files listed when the dataset is built), not
    V2's ``ListFiles`` -> ``ReadFiles``, which lists and reads footers again in every execution."""
    cached = _operators(_build(tiny_shards, True)["train"])
    assert "RandomizeBlocks" in cached
    streaming = _build(tiny_shards, False)
    for name in ("train", "score", "val"):
        ops = _operators(streaming[name])
        assert "RandomizeBlocks" not in ops and "Read" in ops and "ListFiles" not in ops, (name, ops)
