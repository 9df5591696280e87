"""The Parquet slice shards: schema, dataset.json, and the local (pyarrow) reader.

``aide-ray ingest`` writes one row per 2D slice into ``part-NNNNN.parquet``
files plus ``dataset.json``; this module is the one place that knows that
layout. Training streams rows with
:func:`aide_ray.distributed.shard_reader.read_slices` (Ray Data, kept out of
the data room so that it never imports Ray) and decodes them with
:func:`aide_ray.data.decode.decode_batch`; evaluation, figures and tests use
:func:`read_slices_local` (pyarrow only), which yields the same decoded
samples without a cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from aide_ray._internal import fs
from aide_ray.data.decode import decode_batch
from aide_ray.exceptions import InputError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "DATASET_JSON",
    "load_dataset_info",
    "shard_files",
    "check_split",
    "read_slices_local",
]

SCHEMA_VERSION = 1
DATASET_JSON = "dataset.json"

SCHEMA: pa.Schema = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),  # "case_id/annotator/slice", annotator "-" when empty
    pa.field("sample_index", pa.int64(), nullable=False),  # dense 0..N-1 over all rows, in sample_id order
    pa.field("case_id", pa.string(), nullable=False),
    pa.field("slice_index", pa.int32(), nullable=False),  # numpy axis 0 of the (resampled) volume
    pa.field("num_modalities", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # float32 little-endian C-order (M, H, W)
    # uint8 (H, W) in {0, 1}, scribbles also 255 (unannotated); null when label_kind is none
    pa.field("label", pa.binary(), nullable=True),
    pa.field("clean_label", pa.binary(), nullable=True),  # uint8 (H, W); diagnostics only, never trained on
    pa.field("label_kind", pa.string(), nullable=False),  # hq | lq | scribble | none
    pa.field("annotator", pa.string(), nullable=False),  # "" when the manifest has none
    pa.field("domain", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train | val | test
    pa.field("spacing_x", pa.float64(), nullable=False),  # mm, after resampling
    pa.field("spacing_y", pa.float64(), nullable=False),
    pa.field("spacing_z", pa.float64(), nullable=False),  # 1.0 for 2D images
])


def load_dataset_info(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``dataset.json`` of a shards folder.

    Raises:
        InputError: if the folder or its dataset.json is missing, unreadable,
            or of another schema version.
    """
    path = fs.join(shards_dir, DATASET_JSON)
    if not fs.exists(path):
        raise InputError(f"{path} not found: {shards_dir} is not a shards folder written by `aide-ray ingest`")
    try:
        info = json.loads(fs.read_text(path))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if not isinstance(info, dict) or info.get("schema_version") != SCHEMA_VERSION:
        version = info.get("schema_version") if isinstance(info, dict) else None
        raise InputError(f"{path}: schema_version must be {SCHEMA_VERSION}, got {version!r}")
    return info


def shard_files(shards_dir: str | os.PathLike) -> list[str]:
    """Absolute paths of the folder's shards, in order (as listed in dataset.json)."""
    info = load_dataset_info(shards_dir)
    files = [fs.join(fs.resolve(shards_dir), name) for name in info["shards"]]
    missing = [f for f in files if not fs.exists(f)]
    if missing:
        raise InputError(f"{shards_dir}: shard file(s) listed in {DATASET_JSON} are missing: {missing[:3]}")
    return files


def check_split(split: str | None, info: dict[str, Any], shards_dir: str | os.PathLike) -> None:
    """Raise if ``split`` is not None and not a split of the dataset described by ``info``.

    Raises:
        InputError: a split that the dataset lacks.
    """
    if split is not None and split not in info["counts"]["split"]:
        raise InputError(f"{shards_dir}: split must be one of {sorted(info['counts']['split'])}, got {split!r}")


def _table_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def read_slices_local(path: str | os.PathLike, split: str | None = None) -> dict[str, np.ndarray]:
    """Read and decode every row (of one split) with pyarrow only, sorted by sample_index.

    Args:
        path: shards folder.
        split: keep only this split; None: all rows.
    Returns:
        The output of :func:`aide_ray.data.decode.decode_batch` for all rows
        (``image`` (N, M, H, W) float32, ``label`` (N, H, W) uint8, ...).
    """
    info = load_dataset_info(path)
    check_split(split, info, path)
    filesystem, files = fs.filesystem_and_paths(shard_files(path))
    dataset = pds.dataset(files, format="parquet", schema=SCHEMA, filesystem=filesystem)
    table = dataset.to_table(filter=None if split is None else pc.field("split") == split)
    table = table.sort_by("sample_index")
    if table.num_rows == 0:
        m, h, w = info["shape"]
        return {
            "image": np.zeros((0, m, h, w), np.float32), "label": np.zeros((0, h, w), np.uint8),
            "has_label": np.zeros(0, bool), "hq": np.zeros(0, bool), "scribble": np.zeros(0, bool),
            "clean_label": np.zeros((0, h, w), np.uint8),
            "has_clean_label": np.zeros(0, bool), "sample_index": np.zeros(0, np.int64),
            "sample_id": np.zeros(0, object), "case_id": np.zeros(0, object), "slice_index": np.zeros(0, np.int32),
        }
    return decode_batch(_table_to_numpy(table))
