"""Ingest: a manifest of images and labels becomes Parquet slice shards.

Training reads 2D slices in random order from many workers; reading and
resampling NIfTI/DICOM volumes in every epoch would dominate the run. So the
volumes are read, checked and preprocessed once here, and written as one row
per slice (schema: :data:`aide_ray.data.shards.SCHEMA`) in zstd-compressed
Parquet files with small row groups, plus ``dataset.json`` describing the
dataset (counts, shape, preprocessing, source hashes, per-case slice counts).

The output is all-or-nothing (written into a temporary folder and renamed) and
deterministic: the same inputs give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from aide_ray._internal.io import atomic_dir
from aide_ray.data.image_io import read_image
from aide_ray.data.label_kinds import SCRIBBLE
from aide_ray.data.manifest import image_columns, read_manifest
from aide_ray.data.preprocess import PreparedCase, Preprocessing, prepare_label, preprocess_case
from aide_ray.data.shards import DATASET_JSON, SCHEMA, SCHEMA_VERSION
from aide_ray.data.verify import SHARD_FILES_KEY, shard_record
from aide_ray.exceptions import InputError

__all__ = ["ingest", "sample_id", "ROW_GROUP_SIZE", "file_sha256"]

ROW_GROUP_SIZE = 64  # rows per Parquet row group: small, so readers can stream a shard in pieces


def sample_id(case_id: str, annotator: str, slice_index: int) -> str:
    """Stable, globally unique id of one slice row: ``case_id/annotator/slice``.

    The annotator is "-" when empty; the slice index is zero-padded to 4
    digits so that string order is slice order.
    """
    return f"{case_id}/{annotator or '-'}/{slice_index:04d}"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a DICOM folder's files (names and bytes, sorted by name)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class _ShardWriter:
    """Buffers rows and writes ``part-NNNNN.parquet`` files of ``rows_per_shard`` rows."""

    def __init__(self, folder: Path, rows_per_shard: int) -> None:
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.buffered = 0
        self.files: list[str] = []

    def add(self, row: dict[str, Any]) -> None:
        for name in SCHEMA.names:
            self.columns[name].append(row[name])
        self.buffered += 1
        if self.buffered >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        table = pa.table({name: pa.array(values, type=SCHEMA.field(name).type)
                          for name, values in self.columns.items()}, schema=SCHEMA)
        name = f"part-{len(self.files):05d}.parquet"
        pq.write_table(table, self.folder / name, compression="zstd", row_group_size=ROW_GROUP_SIZE)
        self.files.append(name)
        self.columns = {name: [] for name in SCHEMA.names}
        self.buffered = 0


def _prefix(rec: Any) -> str:
    return f"{rec['case_id']}/{rec['annotator'] or '-'}/"


def ingest(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, prep: Preprocessing,
           rows_per_shard: int = 256, *, overwrite: bool = False, progress: bool | None = None) -> Path:
    """Preprocess every case of a manifest and write Parquet slice shards.

    Args:
        manifest_path: manifest CSV (see :mod:`aide_ray.data.manifest`).
        out_dir: output folder; written atomically, nothing is left on failure.
        prep: preprocessing (spacing, size, normalisation).
        rows_per_shard: rows per ``part-NNNNN.parquet`` file.
        overwrite: replace an existing ``out_dir``.
        progress: show a tqdm bar; None: only on a terminal.
    Returns:
        ``out_dir``.
    Raises:
        InputError: any bad input (manifest, missing/unreadable/truncated/4D
            image, geometry mismatch, label values, scribble values other than
            the classes and 255, NaN/Inf), naming the CSV row and the file.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
    manifest_path = Path(manifest_path).resolve()
    df = read_manifest(manifest_path)
    image_cols = image_columns(list(df.columns))
    num_modalities = len(image_cols)
    # Rows of one (case, annotator) are contiguous in sample_id order, and the
    # groups sort by their "case_id/annotator/" prefix (neither contains "/").
    order = sorted(df.index, key=lambda r: _prefix(df.loc[r]))

    hashes: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    counts: dict[str, Counter] = {"split": Counter(), "label_kind": Counter(), "split_label_kind": Counter()}
    cache_key: tuple[str, ...] | None = None
    cached: tuple[list, PreparedCase] | None = None
    index = 0
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer = _ShardWriter(tmp, rows_per_shard)
        for row in tqdm(order, desc="ingest", unit="case", disable=(None if progress is None else not progress)):
            rec = df.loc[row]
            where = f"{manifest_path.name} row {row}"
            try:
                paths = tuple(rec[c] for c in image_cols)
                # Multi-rater manifests repeat one image per annotator: preprocess it once.
                if paths != cache_key:
                    images = [read_image(p) for p in paths]
                    prepared = preprocess_case(images, None, prep, names=list(paths))
                    cache_key, cached = paths, (images, prepared)
                images, prepared = cached
                labels = {}
                for col in ("label", "clean_label"):
                    if rec[col]:
                        # Only the training label can be partial; clean_label is always a full mask.
                        scribble = col == "label" and rec["label_kind"] == SCRIBBLE
                        labels[col] = prepare_label(read_image(rec[col]), images[0], prep, name=rec[col],
                                                    reference_name=paths[0], scribble=scribble)
            except InputError as e:
                raise InputError(f"{where}: {e}") from None
            for p in [*paths, rec["label"], rec["clean_label"]]:
                if p and p not in hashes:
                    hashes[p] = file_sha256(p)

            num_slices = prepared.image.shape[0]
            sx, sy, sz = prepared.spacing
            slice_order = sorted(range(num_slices), key=lambda s: sample_id(rec["case_id"], rec["annotator"], s))
            for s in slice_order:
                writer.add({
                    "sample_id": sample_id(rec["case_id"], rec["annotator"], s),
                    "sample_index": index,
                    "case_id": rec["case_id"],
                    "slice_index": s,
                    "num_modalities": num_modalities,
                    "height": prep.size,
                    "width": prep.size,
                    "image": np.ascontiguousarray(prepared.image[s], dtype="<f4").tobytes(),
                    "label": labels["label"][s].tobytes() if "label" in labels else None,
                    "clean_label": labels["clean_label"][s].tobytes() if "clean_label" in labels else None,
                    "label_kind": rec["label_kind"],
                    "annotator": rec["annotator"],
                    "domain": rec["domain"],
                    "split": rec["split"],
                    "spacing_x": float(sx),
                    "spacing_y": float(sy),
                    "spacing_z": float(sz),
                })
                index += 1
            counts["split"][rec["split"]] += num_slices
            counts["label_kind"][rec["label_kind"]] += num_slices
            counts["split_label_kind"][(rec["split"], rec["label_kind"])] += num_slices
            cases.append({
                "case_id": rec["case_id"],
                "annotator": rec["annotator"],
                "split": rec["split"],
                "label_kind": rec["label_kind"],
                "domain": rec["domain"],
                "manifest_row": int(row),
                "images": list(paths),
                "label": rec["label"] or None,
                "clean_label": rec["clean_label"] or None,
                "num_slices": int(num_slices),
                "input_size": list(images[0].GetSize()),
                "spacing": [float(sx), float(sy), float(sz)],
            })
        writer.flush()

        split_kind: dict[str, dict[str, int]] = {}
        for (split, kind), n in sorted(counts["split_label_kind"].items()):
            split_kind.setdefault(split, {})[kind] = n
        info = {
            "schema_version": SCHEMA_VERSION,
            "num_samples": index,
            "shape": [num_modalities, prep.size, prep.size],
            "counts": {
                "split": dict(sorted(counts["split"].items())),
                "label_kind": dict(sorted(counts["label_kind"].items())),
                "split_label_kind": split_kind,
            },
            "preprocessing": prep.to_dict(),
            "manifest": str(manifest_path),
            "manifest_sha256": file_sha256(manifest_path),
            "source_sha256": dict(sorted(hashes.items())),
            "shards": writer.files,
            # Size, SHA-256 and rows of every shard: checked before any training (aide_ray.data.verify).
            SHARD_FILES_KEY: {name: shard_record(tmp / name) for name in writer.files},
            "columns": SCHEMA.names,
            "cases": cases,
        }
        (tmp / DATASET_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
