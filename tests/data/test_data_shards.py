"""Readers: decode_batch and the local (pyarrow) reader.

The Ray Data reader and summary are tested in tests/distributed/test_shard_reader.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from aide_ray.cli.main import main
from aide_ray.data.decode import decode_batch
from aide_ray.data.shards import load_dataset_info, read_slices_local, shard_files
from aide_ray.exceptions import InputError


def test_decode_batch_handles_nulls_and_shapes():
    img = np.arange(2 * 2 * 3, dtype="<f4").reshape(2, 2, 3)
    lab = np.array([[0, 1, 1], [0, 0, 1]], np.uint8)
    batch = {
        "image": np.array([img.tobytes(), (img + 1).tobytes()], dtype=object),
        "label": np.array([lab.tobytes(), None], dtype=object),
        "clean_label": np.array([None, lab.tobytes()], dtype=object),
        "label_kind": np.array(["hq", "none"], dtype=object),
        "num_modalities": np.array([2, 2], np.int32), "height": np.array([2, 2], np.int32),
        "width": np.array([3, 3], np.int32), "sample_index": np.array([5, 9]),
        "sample_id": np.array(["a/-/0000", "a/-/0001"], dtype=object), "case_id": np.array(["a", "a"], dtype=object),
        "slice_index": np.array([0, 1], np.int32),
    }
    out = decode_batch(batch)
    assert out["image"].shape == (2, 2, 2, 3) and out["image"].dtype == np.float32
    assert np.array_equal(out["image"][1], img + 1)
    assert out["label"].dtype == np.uint8 and np.array_equal(out["label"][0], lab) and not out["label"][1].any()
    assert out["has_label"].tolist() == [True, False] and out["hq"].tolist() == [True, False]
    assert out["has_clean_label"].tolist() == [False, True] and np.array_equal(out["clean_label"][1], lab)
    assert out["sample_index"].dtype == np.int64 and out["slice_index"].dtype == np.int32
    assert out["sample_id"].dtype == object and list(out["case_id"]) == ["a", "a"]
    assert set(decode_batch({"sample_index": np.array([1])})) == {"sample_index"}
    batch["width"] = np.array([3, 4], np.int32)
    with pytest.raises(ValueError, match=r"all rows of a batch must share one width, got \[3, 4\]"):
        decode_batch(batch)


def test_local_reader(demo_shards):
    full = read_slices_local(demo_shards)
    assert full["image"].shape == (96, 1, 64, 64)
    assert full["sample_index"].tolist() == list(range(96))
    test = read_slices_local(demo_shards, "test")
    assert len(test["sample_index"]) == 16 and set(test["case_id"]) == {"case_010", "case_011"}
    assert test["hq"].all() and not test["has_clean_label"].any()
    train = read_slices_local(demo_shards, "train")
    assert train["has_clean_label"].all() and train["hq"].sum() == 8
    with pytest.raises(InputError, match=r"split must be one of \['test', 'train', 'val'\], got 'dev'"):
        read_slices_local(demo_shards, "dev")


def test_missing_dataset_json(tmp_path):
    with pytest.raises(InputError, match="dataset.json not found"):
        load_dataset_info(tmp_path)


def test_data_summary_cli_bad_folder(tmp_path, capsys):
    assert main(["data-summary", str(tmp_path)]) == 2
    assert "dataset.json not found" in capsys.readouterr().err


def test_row_groups_stream(demo_shards):
    f = pq.ParquetFile(demo_shards / "part-00000.parquet")
    sizes = [len(b) for b in f.iter_batches(batch_size=64)]
    assert sum(sizes) == 32


def test_shards_are_readable_through_a_uri(demo_shards):
    """Cluster jobs point data.shards at object storage; file:// exercises the same pyarrow.fs path."""
    uri = f"file://{demo_shards}"
    assert load_dataset_info(uri) == load_dataset_info(demo_shards)
    assert all(f.startswith("file://") for f in shard_files(uri))
    local = read_slices_local(demo_shards, split="val")
    remote = read_slices_local(uri, split="val")
    assert (local["sample_index"] == remote["sample_index"]).all()
