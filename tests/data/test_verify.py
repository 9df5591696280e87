"""Tests of aide_ray.data.verify: a missing, truncated or garbled shard is named in one line before any training."""

from __future__ import annotations

import json
import shutil

import pytest

from aide_ray.cli.main import main
from aide_ray.data.verify import SHARD_FILES_KEY, shard_record, verify_shards
from aide_ray.exceptions import InputError


@pytest.fixture
def shards(demo_shards, tmp_path):
    """A private copy of the demo shards (3 files), with sizes, hashes and rows recorded as ingest records them."""
    folder = shutil.copytree(demo_shards, tmp_path / "shards")
    info = json.loads((folder / "dataset.json").read_text())
    info[SHARD_FILES_KEY] = {name: shard_record(folder / name) for name in info["shards"]}
    (folder / "dataset.json").write_text(json.dumps(info))
    return folder


def _unrecorded(folder):
    info = json.loads((folder / "dataset.json").read_text())
    del info[SHARD_FILES_KEY]
    (folder / "dataset.json").write_text(json.dumps(info))


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _garble(path):
    """Same size, bytes changed in the middle of the data pages (the footer is intact)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def test_good_shards_verify(shards, capsys):
    info = verify_shards(shards, read_rows=True)
    assert info["num_samples"] == 96 and len(info[SHARD_FILES_KEY]) == 3
    assert main(["verify", str(shards)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {shards}: 3 shard(s), 96 rows; checked sizes, SHA-256")


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.unlink(), r"part-00001.parquet must exist \(listed in dataset.json\), got no such file"),
    (_truncate, r"part-00001.parquet must have \d+ bytes as recorded in dataset.json, got \d+: the shard is truncated"),
    (_garble, r"part-00001.parquet must have the SHA-256 recorded in dataset.json, got another: the shard is garbled"),
])
def test_a_damaged_shard_is_named_in_one_line(shards, capsys, damage, match):
    damage(shards / "part-00001.parquet")
    with pytest.raises(InputError, match=match):
        verify_shards(shards)
    assert main(["verify", str(shards)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aide-ray verify: error: ") and "part-00001.parquet" in err and err.count("\n") == 1


def test_shards_ingested_without_records_are_checked_by_their_footers_and_rows(shards, capsys):
    _unrecorded(shards)
    _truncate(shards / "part-00002.parquet")
    with pytest.raises(InputError, match=r"part-00002.parquet must be a readable Parquet shard, got .*: the shard "
                                         r"is truncated or garbled"):
        verify_shards(shards)
    assert main(["data-summary", str(shards)]) == 2  # fails before starting Ray
    assert "part-00002.parquet must be a readable Parquet shard" in capsys.readouterr().err


def test_garbled_pages_without_records_are_found_by_reading_every_row_group(shards):
    _unrecorded(shards)
    _garble(shards / "part-00000.parquet")
    verify_shards(shards)  # the quick check (footer, schema, rows) cannot see it
    with pytest.raises(InputError, match="part-00000.parquet must be a readable Parquet shard"):
        verify_shards(shards, read_rows=True)


def test_rows_must_add_up_to_num_samples(shards):
    info = json.loads((shards / "dataset.json").read_text())
    info["num_samples"] = 95
    (shards / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"dataset.json num_samples must equal the rows of its shards \(96\), got 95"):
        verify_shards(shards)
