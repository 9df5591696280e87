"""The Ray Data side of the shards: read_slices gives the same samples as the local reader; summarize.

Marked ``ray``: every test here uses the session's local Ray cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aide_ray.cli.main import main
from aide_ray.data.decode import decode_batch
from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info, read_slices_local
from aide_ray.distributed.shard_reader import read_slices, summarize
from aide_ray.exceptions import InputError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> Path:
    """The default demo dataset (12 cases x 8 slices x 64 px) ingested into 3 shards of 32 rows.

    The same data as tests/data/conftest.py's ``demo_shards``, whose fixtures this folder does not see.
    """
    manifest = make_demo_data(tmp_path_factory.mktemp("demo") / "demo")
    return ingest(manifest, tmp_path_factory.mktemp("shards") / "shards", Preprocessing(size=64),
                  rows_per_shard=32, progress=False)


def _collect(ds):
    batches = list(ds.iter_batches(batch_size=7, batch_format="numpy"))
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(merged["sample_index"])
    return {k: v[order] for k, v in merged.items()}


def test_ray_path_equals_local_reader(ray_cluster, demo_shards):
    # "test" rows live only in the last shard: the other shards give empty blocks after the filter.
    ray_data = _collect(read_slices(demo_shards, "test").map_batches(decode_batch, batch_format="numpy"))
    local = read_slices_local(demo_shards, "test")
    assert set(ray_data) == set(local)
    for key, value in local.items():
        got = ray_data[key]
        assert got.shape == value.shape, key
        if value.dtype == object:
            assert [str(v) for v in got] == list(value), key
        else:
            assert got.dtype == value.dtype and np.array_equal(got, value), key


def test_ray_columns_and_summary(ray_cluster, demo_shards, capsys):
    ds = read_slices(demo_shards, "val", columns=["sample_index", "label", "height", "width"])
    out = _collect(ds.map_batches(decode_batch, batch_format="numpy"))
    assert set(out) == {"sample_index", "label", "has_label"} and out["has_label"].all()
    assert len(out["sample_index"]) == 16
    with pytest.raises(InputError, match="columns must be among"):
        read_slices(demo_shards, columns=["pixels"])

    table = summarize(demo_shards, batch_size=16)
    info = load_dataset_info(demo_shards)
    got = {(r.split, r.label_kind): r.slices for r in table.itertuples()}
    assert got == {(s, k): n for s, kinds in info["counts"]["split_label_kind"].items() for k, n in kinds.items()}
    assert table["slices"].sum() == 96 and table.attrs["batches"] == 6 and table.attrs["shape"] == [1, 64, 64]
    local = read_slices_local(demo_shards, "val")
    assert table.set_index(["split", "label_kind"]).loc[("val", "hq"), "foreground_fraction"] == \
        pytest.approx(local["label"].mean())

    assert main(["data-summary", str(demo_shards), "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "96 slices" in printed and "3 batches" in printed and "slices/s" in printed
    assert "train" in printed and "lq" in printed
