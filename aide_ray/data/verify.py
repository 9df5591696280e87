"""Checking Parquet shards against their ``dataset.json`` before anything streams them.

Training and ``data-summary`` read the shards in Ray Data tasks; a missing,
truncated or garbled file used to fail there, 40-65 s in, with Ray and pyarrow
tracebacks. :func:`verify_shards` runs first, in the driver, and names the bad
file in one line: every shard listed in ``dataset.json`` exists, has the size
and SHA-256 recorded at ingest (when recorded: ``shard_files``, see
:func:`shard_record`), has a readable Parquet footer with the shard schema and
the recorded row count, and the rows add up to ``num_samples``. With
``read_rows`` (``aide-ray verify``) every row group is also read back, which
finds a garbled page in shards ingested before sizes and hashes were recorded.

This file is its own module because it is the one check of a shards folder
that every entry point (train, Tune, data-summary, verify) shares; it reads
with pyarrow only, never Ray.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aide_ray._internal import fs
from aide_ray.data.shards import DATASET_JSON, SCHEMA, load_dataset_info
from aide_ray.exceptions import InputError

__all__ = ["verify_shards", "shard_record", "SHARD_FILES_KEY"]

SHARD_FILES_KEY = "shard_files"  # dataset.json: {name: {"bytes", "sha256", "rows"}}, written by ingest
_CHUNK = 1 << 20


def _open(path: str) -> tuple[pafs.FileSystem, str]:
    if fs.is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(path)


def _sha256(filesystem: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_record(path: str | os.PathLike) -> dict[str, Any]:
    """What ``dataset.json`` records of one shard: ``{"bytes", "sha256", "rows"}``."""
    filesystem, plain = _open(str(path))
    with filesystem.open_input_file(plain) as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    return {"bytes": filesystem.get_file_info(plain).size, "sha256": _sha256(filesystem, plain), "rows": int(rows)}


def _reason(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_file(path: str, record: dict[str, Any], *, hashes: bool, read_rows: bool) -> int:
    """Check one shard; returns its rows."""
    filesystem, plain = _open(path)
    stat = filesystem.get_file_info(plain)
    if stat.type != pafs.FileType.File:
        raise InputError(f"{path} must exist (listed in {DATASET_JSON}), got no such file")
    if "bytes" in record and stat.size != int(record["bytes"]):
        raise InputError(f"{path} must have {int(record['bytes'])} bytes as recorded in {DATASET_JSON}, "
                         f"got {stat.size}: the shard is truncated or changed")
    if hashes and "sha256" in record and _sha256(filesystem, plain) != record["sha256"]:
        raise InputError(f"{path} must have the SHA-256 recorded in {DATASET_JSON}, got another: "
                         f"the shard is garbled or replaced")
    try:
        with filesystem.open_input_file(plain) as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            rows = parquet.metadata.num_rows
            if read_rows:
                for group in range(parquet.num_row_groups):
                    parquet.read_row_group(group)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"{path} must be a readable Parquet shard, got {_reason(e)!r}: "
                         f"the shard is truncated or garbled") from e
    if schema.names != SCHEMA.names:
        raise InputError(f"{path} must have the shard columns {SCHEMA.names}, got {schema.names}")
    if "rows" in record and rows != int(record["rows"]):
        raise InputError(f"{path} must hold {int(record['rows'])} rows as recorded in {DATASET_JSON}, got {rows}")
    return int(rows)


def verify_shards(shards_dir: str | os.PathLike, *, hashes: bool = True, read_rows: bool = False) -> dict[str, Any]:
    """Check a shards folder against its ``dataset.json``; see the module docstring.

    Args:
        shards_dir: folder (or URI) written by ``aide-ray ingest``.
        hashes: compare SHA-256 where ``dataset.json`` records one (reads every byte).
        read_rows: also read every row group back (slower; ``aide-ray verify``).

    Returns:
        The folder's ``dataset.json``.

    Raises:
        InputError: naming the first missing, truncated or garbled shard, or a
            ``dataset.json`` whose rows do not add up.
    """
    info = load_dataset_info(shards_dir)
    names = info.get("shards")
    where = fs.join(shards_dir, DATASET_JSON)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where} 'shards' must be a non-empty list of file names, got {names!r}")
    records = info.get(SHARD_FILES_KEY) or {}
    base = fs.resolve(shards_dir)
    total = sum(_check_file(fs.join(base, name), records.get(name, {}), hashes=hashes, read_rows=read_rows)
                for name in names)
    if total != int(info.get("num_samples", -1)):
        raise InputError(f"{where} num_samples must equal the rows of its shards ({total}), "
                         f"got {info.get('num_samples')!r}")
    return info
