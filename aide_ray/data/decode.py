"""Decode a batch of Parquet slice rows into arrays.

Kept apart from :mod:`aide_ray.data.shards` and free of Ray, pyarrow and torch
imports so that Ray Data can ship :func:`decode_batch` to its workers
(``ds.map_batches(decode_batch, batch_format="numpy")``) and the local reader
can use the very same function: both paths then yield identical samples.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from aide_ray.data.label_kinds import HQ, SCRIBBLE

__all__ = ["decode_batch", "DECODED_KEYS"]

DECODED_KEYS: tuple[str, ...] = (
    "image", "label", "has_label", "hq", "scribble", "clean_label", "has_clean_label",
    "sample_index", "sample_id", "case_id", "slice_index",
)


def _shape(batch: Mapping[str, np.ndarray], *, with_modalities: bool) -> tuple[int, ...]:
    keys = ("num_modalities", "height", "width") if with_modalities else ("height", "width")
    dims = []
    for key in keys:
        values = np.unique(np.asarray(batch[key]))
        if len(values) != 1:
            raise ValueError(f"all rows of a batch must share one {key}, got {values.tolist()}")
        dims.append(int(values[0]))
    return tuple(dims)


def _masks(cells: np.ndarray, hw: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    present = np.array([c is not None for c in cells], dtype=bool)
    out = np.zeros((len(cells), *hw), dtype=np.uint8)
    n = int(np.prod(hw))
    for i in np.flatnonzero(present):
        out[i] = np.frombuffer(cells[i], dtype=np.uint8, count=n).reshape(hw)
    return out, present


def _objects(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [str(v) for v in values]
    return out


def decode_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode raw slice rows (numpy batch format) into training arrays.

    Only the outputs whose source columns are present are produced, so a
    reader that selected fewer columns still decodes.

    Args:
        batch: column name -> (B,) array as Ray's ``batch_format="numpy"``
            gives it (binary cells as ``bytes`` in object arrays, nulls as None).
    Returns:
        ``image`` (B, M, H, W) float32; ``label`` (B, H, W) uint8 in {0, 1}
        (scribble rows: also 255, ``UNANNOTATED``, kept as it is), zeros where
        null; ``has_label`` (B,) bool; ``hq`` (B,) bool (label_kind == "hq");
        ``scribble`` (B,) bool (label_kind == "scribble"); ``clean_label`` (B, H, W) uint8, zeros where
        null; ``has_clean_label`` (B,) bool; ``sample_index`` (B,) int64;
        ``sample_id``, ``case_id`` (B,) object (str); ``slice_index`` (B,) int32.
    Raises:
        ValueError: if rows of the batch have different shapes.
    """
    out: dict[str, np.ndarray] = {}
    if "image" in batch:
        m, h, w = _shape(batch, with_modalities=True)
        cells = batch["image"]
        raw = b"".join(cells)
        out["image"] = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True).reshape(len(cells), m, h, w)
    if "label" in batch:
        out["label"], out["has_label"] = _masks(batch["label"], _shape(batch, with_modalities=False))
    if "label_kind" in batch:
        kinds = np.asarray(batch["label_kind"]).astype(str)
        out["hq"] = kinds == HQ
        out["scribble"] = kinds == SCRIBBLE
    if "clean_label" in batch:
        out["clean_label"], out["has_clean_label"] = _masks(batch["clean_label"], _shape(batch, with_modalities=False))
    if "sample_index" in batch:
        out["sample_index"] = np.asarray(batch["sample_index"], dtype=np.int64)
    for key in ("sample_id", "case_id"):
        if key in batch:
            out[key] = _objects(batch[key])
    if "slice_index" in batch:
        out["slice_index"] = np.asarray(batch["slice_index"], dtype=np.int32)
    return out
