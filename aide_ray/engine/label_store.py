"""AIDE's global label-correction store: corrected labels, versioned, with deltas and snapshots.

AIDE (Wang, Li et al., "Annotation-efficient deep learning for automatic medical
image segmentation", Nat. Commun. 2021) replaces, at the end of some epochs, the
labels of the training samples on which a network agrees least with its label
(lowest Dice) by that network's prediction. In a distributed run every worker
sees only its shard, so the selection must be global and the corrected labels
must reach every worker. This module is that shared state, kept separate from
the training loop so that it can be unit-tested without Ray:

* :class:`LabelStore` (plain class; the lead's loop runs it as one Ray actor via
  :func:`create_label_store_actor`) gathers each worker's local lowest-k
  candidates, answers the global lowest-k, stores the committed labels and
  versions every change.
* :class:`LabelCache` (worker side) holds a copy of the stored entries,
  refreshed with :meth:`LabelStore.changes_since` deltas, and overlays them onto
  a batch's source labels.

Storage. For each (slot, sample) the store keeps the current label only where
it differs from the source label: one ``bytes`` entry encoding the XOR
difference ``label ^ source`` inside its bounding box (bit-packed when the
difference is in {0, 1}, which is always the case for binary masks, else raw
uint8; zlib level 1 when the payload is large enough for that to pay off). A
label equal to its source has no entry. The store never needs the source labels
except at commit; readers XOR the entry back onto the source they already have.
See docs/label_store.md for the format, versioning and restart semantics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import struct
import sys
import zipfile
import zlib
from bisect import bisect_right
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from aide_ray._internal.io import atomic_file
from aide_ray.exceptions import CheckpointError

__all__ = [
    "LabelDelta",
    "LabelStore",
    "LabelCache",
    "create_label_store_actor",
    "encode_differences",
    "apply_difference",
    "SNAPSHOT_FORMAT",
]

#: Version of the snapshot layout written by :meth:`LabelStore.snapshot_bytes`.
SNAPSHOT_FORMAT = 1

# Entry layout: flags (bit 0: bit-packed, bit 1: zlib), then the bounding box
# y0, y1, x0, x1 (half-open) as uint16, then the payload.
_HEADER = struct.Struct("<BHHHH")
_FLAG_PACKED = 1
_FLAG_ZLIB = 2
# zlib's per-call set-up costs ~5 us whatever the input; below this many bytes
# it saves little memory, and at 10^6 samples per epoch it would cost seconds.
_COMPRESS_MIN_BYTES = 256
_ZLIB_LEVEL = 1
# Labels compared per vectorised pass: large enough to amortise the ~20 numpy
# calls per pass, small enough for the comparison buffer (1 MiB at 256 x 256).
_ENCODE_CHUNK = 128
_MAX_SIDE = 65535  # the bounding box is stored as uint16
_CPYTHON_BYTES_OVERHEAD = 33  # sys.getsizeof(b"") on 64-bit CPython

_SNAPSHOT_KEYS = (
    "format",
    "version",
    "num_samples",
    "label_slots",
    "shape",
    "entry_slot",
    "entry_index",
    "entry_length",
    "entry_data",
    "last_changed",
    "changed_epoch",
    "stat_epochs",
    "stat_changed",
    "commit_keys",
    "commit_versions",
    "lineage",
)
_PENDING_RE = re.compile(r"^(report|select)-e(\d+)-s(\d+)(?:-[0-9a-f]+)?\.npz$")


# --------------------------------------------------------------------------- encoding


def _check_masks(masks: np.ndarray, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    if not isinstance(masks, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(masks).__name__}")
    if masks.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {masks.dtype}; convert with .astype(np.uint8)")
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W), got {masks.shape}")
    if shape is not None and masks.shape[1:] != tuple(shape):
        raise ValueError(f"{name} must have shape (n, {shape[0]}, {shape[1]}), got {masks.shape}")
    return np.ascontiguousarray(masks)


def _finish_entry(payload: bytes, flags: int, y0: int, y1: int, x0: int, x1: int) -> bytes:
    if len(payload) >= _COMPRESS_MIN_BYTES:
        compressed = zlib.compress(payload, _ZLIB_LEVEL)
        if len(compressed) < len(payload):
            return _HEADER.pack(flags | _FLAG_ZLIB, y0, y1, x0, x1) + compressed
    return _HEADER.pack(flags, y0, y1, x0, x1) + payload


def _encode_crop(diff: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> bytes:
    """Entry of one difference crop (y1-y0, x1-x0) uint8: bit-packed if in {0, 1}, else raw."""
    if diff.max() <= 1:
        return _finish_entry(np.packbits(diff).tobytes(), _FLAG_PACKED, y0, y1, x0, x1)
    return _finish_entry(diff.tobytes(), 0, y0, y1, x0, x1)


def encode_differences(masks: np.ndarray, source: np.ndarray) -> list[bytes | None]:
    """Encode each label as its difference from the source label.

    This is what :meth:`LabelStore.commit` stores; workers may call it
    themselves and send the result to :meth:`LabelStore.commit_encoded`, which
    moves the encoding cost off the store and sends bytes instead of masks.

    Args:
        masks: current labels, shape (n, H, W), uint8 (binary {0, 1} or class maps).
        source: the source labels of the same samples, shape (n, H, W), uint8.

    Returns:
        n entries: ``None`` where ``masks[i]`` equals ``source[i]``, else the
        encoded XOR difference (see the module docstring).

    Raises:
        TypeError: if an array is not uint8.
        ValueError: if the shapes differ or a side exceeds 65535.
    """
    masks = _check_masks(masks, "masks")
    source = _check_masks(source, "source_masks")
    if masks.shape != source.shape:
        raise ValueError(f"masks and source_masks must have the same shape, got {masks.shape} and {source.shape}")
    n, height, width = masks.shape
    if max(height, width) > _MAX_SIDE:
        raise ValueError(f"label sides must be <= {_MAX_SIDE}, got {height} x {width}")
    out: list[bytes | None] = [None] * n
    # Rows that split into whole uint64 words are compared and packed 8 pixels
    # at a time (the box's x extent is then rounded out to 8 pixels: zero bits).
    words = width % 8 == 0 and sys.byteorder == "little"
    group = 8 if words else 1
    # One reusable comparison buffer: a fresh one per chunk costs page faults.
    differs = np.empty(min(n, _ENCODE_CHUNK) * height * (width // group), dtype=bool)
    for start in range(0, n, _ENCODE_CHUNK):
        m = masks[start : start + _ENCODE_CHUNK]
        s = source[start : start + _ENCODE_CHUNK]
        boxes = _find_boxes(m, s, group, differs)
        if boxes is None:
            continue
        if words:
            _encode_boxes_words(m, s, boxes, out, start)
        else:
            for i, ya, yb, xa, xb in zip(*(v.tolist() for v in boxes)):
                out[start + i] = _encode_crop(m[i, ya:yb, xa:xb] ^ s[i, ya:yb, xa:xb], ya, yb, xa, xb)
    return out


def _find_boxes(m: np.ndarray, s: np.ndarray, group: int, buffer: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Bounding boxes of the differing pixels of a chunk of labels (b, H, W).

    Returns:
        None when no label differs, else (sample, y0, y1, x0, x1) int64 arrays,
        one value per differing label; x in units of ``group`` pixels; half-open.
    """
    b, height, width = m.shape
    word = np.uint64 if group == 8 else np.uint8
    words_per_row = width // group
    words_per_label = height * words_per_row
    differs = buffer[: b * words_per_label].reshape(b, words_per_label)
    np.not_equal(m.view(word).reshape(b, words_per_label), s.view(word).reshape(b, words_per_label), out=differs)
    # Differences are sparse, so boxes come from the positions of the differing
    # words (sorted by sample), not from reductions over whole labels.
    pos = np.flatnonzero(differs)
    if pos.size == 0:
        return None
    sample = pos // words_per_label
    rest = pos - sample * words_per_label
    row = rest // words_per_row
    col = rest - row * words_per_row
    first = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
    return (
        sample[first],
        row[first],
        np.maximum.reduceat(row, first) + 1,
        np.minimum.reduceat(col, first),
        np.maximum.reduceat(col, first) + 1,
    )


_HIGH_BITS = np.uint64(0xFEFEFEFEFEFEFEFE)
# Multiplying a little-endian word of eight 0/1 bytes by this constant gathers
# the bytes into the top 8 bits, first pixel highest: np.packbits' bit order.
_PACK_MAGIC = np.uint64(0x8040201008040201)


def _encode_boxes_words(
    m: np.ndarray, s: np.ndarray, boxes: tuple[np.ndarray, ...], out: list[bytes | None], start: int
) -> None:
    """Encode every box of a chunk at once, 8 pixels per uint64 word.

    The words inside all boxes are gathered, XORed and packed in a few
    vectorised operations; only labels whose difference is not in {0, 1}
    (class maps) take the per-label raw path.
    """
    b, height, width = m.shape
    words_per_row = width // 8
    sample, y0, y1, x0, x1 = boxes
    box_h = y1 - y0
    box_w = x1 - x0
    # Index of every word inside the boxes, row by row: a row's words are
    # consecutive, so index = running position + a per-row shift.
    row_owner = np.repeat(np.arange(sample.size), box_h)
    row_in_box = np.arange(row_owner.size) - np.repeat(np.cumsum(box_h) - box_h, box_h)
    row_start = ((sample * height + y0) * words_per_row + x0)[row_owner] + row_in_box * words_per_row
    row_w = box_w[row_owner]
    row_offset = np.cumsum(row_w) - row_w
    index = np.arange(int(row_offset[-1] + row_w[-1])) + np.repeat(row_start - row_offset, row_w)
    diff = np.take(m.reshape(-1).view(np.uint64), index) ^ np.take(s.reshape(-1).view(np.uint64), index)
    count = box_h * box_w
    ends = np.cumsum(count)
    offsets = ends - count
    not_binary = (np.bitwise_or.reduceat(diff, offsets) & _HIGH_BITS) != 0
    diff *= _PACK_MAGIC
    packed = diff.view(np.uint8)[7::8].tobytes()  # the top byte of each word
    columns = (sample, y0, y1, x0 * 8, x1 * 8, offsets, ends, not_binary)
    for i, ya, yb, xa, xb, o, e, raw in zip(*(v.tolist() for v in columns)):
        if raw:
            out[start + i] = _encode_crop(m[i, ya:yb, xa:xb] ^ s[i, ya:yb, xa:xb], ya, yb, xa, xb)
        else:
            out[start + i] = _finish_entry(packed[o:e], _FLAG_PACKED, ya, yb, xa, xb)


def apply_difference(label: np.ndarray, entry: bytes) -> np.ndarray:
    """XOR an encoded difference into ``label`` in place (source -> current label).

    Args:
        label: the source label, shape (H, W), uint8; modified in place.
        entry: an entry made by :func:`encode_differences` for this label.

    Returns:
        ``label``, now the current label.
    """
    flags, y0, y1, x0, x1 = _HEADER.unpack_from(entry)
    body: bytes | memoryview = memoryview(entry)[_HEADER.size :]
    if flags & _FLAG_ZLIB:
        body = zlib.decompress(body)
    h, w = y1 - y0, x1 - x0
    raw = np.frombuffer(body, dtype=np.uint8)
    diff = np.unpackbits(raw, count=h * w) if flags & _FLAG_PACKED else raw
    label[y0:y1, x0:x1] ^= diff.reshape(h, w)
    return label


def _lowest_k(idx: np.ndarray, scores: np.ndarray, k: int, num_samples: int) -> np.ndarray:
    """The k distinct samples of lowest score, ties by sample index.

    A sample reported more than once counts with its lowest score.

    Args:
        idx: (n,) int64 sample indices in [0, num_samples), possibly repeated.
        scores: (n,) float32 finite scores.
    Returns:
        (min(k, distinct),) int64, lowest first.
    """
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if num_samples <= 2**32:
        # One uint64 key per candidate, (score, index) in lexicographic order:
        # a single sort instead of np.lexsort's two passes. The float bits are
        # mapped to order-preserving unsigned ints (+0.0 turns -0.0 into 0.0).
        bits = (scores.astype(np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
        negative = bits >= 2**31
        bits[negative] = ~bits[negative] & 0xFFFFFFFF
        bits[~negative] |= 2**31
        keys = (bits << np.uint64(32)) | idx.astype(np.uint64)
        keys.sort()
        ranked = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    else:
        ranked = idx[np.lexsort((idx, scores))]
    if np.bincount(idx, minlength=num_samples).max() > 1:
        # First occurrence of each sample in ranked order = its lowest score.
        _, first = np.unique(ranked, return_index=True)
        ranked = ranked[np.sort(first)]
    return ranked[:k]


# --------------------------------------------------------------------------- validation


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _check_indices(sample_index: Any, num_samples: int, name: str = "sample_index") -> np.ndarray:
    idx = np.asarray(sample_index)
    if idx.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= num_samples):
        bad = idx[(idx < 0) | (idx >= num_samples)]
        raise ValueError(f"{name} must be in [0, {num_samples}), got {bad[:5].tolist()}")
    return idx


def _check_geometry(num_samples: Any, label_slots: Any, shape: Any) -> tuple[int, int, tuple[int, int]]:
    num_samples = _check_int(num_samples, "num_samples", 1)
    label_slots = _check_int(label_slots, "label_slots", 1, 128)  # slot is int8 in deltas
    if len(tuple(shape)) != 2:
        raise ValueError(f"shape must be (H, W), got {shape!r}")
    height = _check_int(tuple(shape)[0], "shape[0]", 1, _MAX_SIDE + 1)
    width = _check_int(tuple(shape)[1], "shape[1]", 1, _MAX_SIDE + 1)
    return num_samples, label_slots, (height, width)


# --------------------------------------------------------------------------- deltas and cache


@dataclasses.dataclass(frozen=True)
class LabelDelta:
    """Entries changed in a :class:`LabelStore` after version ``since``.

    Attributes:
        version: the store's version when the delta was made.
        slot: (n,) int8, the label slot of each changed entry.
        sample_index: (n,) int64, the sample of each changed entry.
        packed: n entries; ``None`` means the label reverted to its source.
        since: the version the delta starts from (exclusive).
        num_samples, label_slots, shape: the store's geometry, checked on apply.
        lineage: 16 random bytes naming the store's history; a restore from a
            snapshot starts a new one, so that a cache filled before it cannot
            mix two histories with the same version numbers.
    """

    version: int
    slot: np.ndarray
    sample_index: np.ndarray
    packed: list[bytes | None]
    since: int = 0
    num_samples: int = 0
    label_slots: int = 0
    shape: tuple[int, int] = (0, 0)
    lineage: bytes = b""

    def __len__(self) -> int:
        return len(self.packed)


class _EntryTable:
    """(slot, sample) -> entry table shared by the store and the worker cache."""

    def __init__(self, num_samples: int, label_slots: int, shape: tuple[int, int]) -> None:
        self.num_samples, self.label_slots, self.shape = _check_geometry(num_samples, label_slots, shape)
        # One object array rather than dicts: 8 bytes per (slot, sample) and
        # vectorised fancy indexing for deltas.
        self._entries = np.full((self.label_slots, self.num_samples), None, dtype=object)

    def _check_slot(self, slot: Any) -> int:
        return _check_int(slot, "slot", 0, self.label_slots)

    def get(self, slot: int, sample_index: int, source: np.ndarray | None = None) -> np.ndarray | None:
        """The stored correction of one sample.

        Args:
            slot: label slot in [0, label_slots).
            sample_index: sample in [0, num_samples).
            source: optional source label, shape (H, W), uint8.

        Returns:
            ``None`` when the label equals its source. Otherwise, with ``source``,
            the current label (H, W) uint8; without it, the XOR difference
            (H, W) uint8, so that ``label == source ^ get(slot, i)`` (for binary
            labels: 1 where the label was flipped).
        """
        slot = self._check_slot(slot)
        i = _check_int(sample_index, "sample_index", 0, self.num_samples)
        entry = self._entries[slot, i]
        if entry is None:
            return None
        if source is None:
            base = np.zeros(self.shape, dtype=np.uint8)
        else:
            base = _check_masks(np.asarray(source)[None], "source", self.shape)[0].copy()
        return apply_difference(base, entry)

    def current(self, slot: int, sample_index: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Overlay the stored corrections onto a batch of source labels.

        Args:
            slot: label slot in [0, label_slots).
            sample_index: (B,) integer sample indices of the batch.
            source: the batch's source labels, shape (B, H, W), uint8.

        Returns:
            The current labels, shape (B, H, W), uint8 (a new array).
        """
        slot = self._check_slot(slot)
        idx = _check_indices(sample_index, self.num_samples)
        out = _check_masks(source, "source", self.shape).copy()
        if out.shape[0] != idx.size:
            raise ValueError(f"source must have {idx.size} labels (one per sample_index), got {out.shape[0]}")
        for b, entry in enumerate(self._entries[slot, idx].tolist()):
            if entry is not None:
                apply_difference(out[b], entry)
        return out

    def num_corrected(self, slot: int) -> int:
        """Number of samples whose label in ``slot`` differs from the source."""
        return int(np.count_nonzero(self._entries[self._check_slot(slot)] != None))  # noqa: E711


class LabelCache(_EntryTable):
    """Worker-side copy of a :class:`LabelStore`'s entries.

    Responsibilities: apply the store's deltas in version order and overlay the
    corrections onto the source labels of each batch (:meth:`current`).

    Args:
        num_samples: N, the number of samples (sample_index in [0, N)).
        label_slots: S, the number of label slots (AIDE: 2, one per network).
        shape: (H, W) of every label.
    """

    def __init__(self, num_samples: int, label_slots: int, shape: tuple[int, int]) -> None:
        super().__init__(num_samples, label_slots, shape)
        self._version = 0
        self._lineage: bytes | None = None

    @property
    def version(self) -> int:
        """The store version this cache reproduces."""
        return self._version

    def reset(self) -> None:
        """Forget every entry (version 0), e.g. after the store was restored from a checkpoint."""
        self._entries[...] = None
        self._version = 0
        self._lineage = None

    def apply(self, delta: LabelDelta) -> None:
        """Bring the cache to ``delta.version``.

        Raises:
            ValueError: if the delta comes from a store of another geometry.
            RuntimeError: if the delta starts after this cache's version (entries
                would be missed), ends before it (newer entries would be undone),
                or comes from a store restored from a snapshot since this cache
                was filled (call :meth:`reset`, then apply ``changes_since(0)``).
        """
        geometry = (delta.num_samples, delta.label_slots, tuple(delta.shape))
        if geometry != (self.num_samples, self.label_slots, self.shape):
            raise ValueError(
                f"delta is for (num_samples, label_slots, shape) = {geometry}, "
                f"cache has {(self.num_samples, self.label_slots, self.shape)}"
            )
        if self._lineage is not None and delta.lineage != self._lineage:
            raise RuntimeError(
                "delta comes from a store restored from a snapshot after this cache was filled; "
                "call cache.reset() and apply store.changes_since(0)"
            )
        if delta.since > self._version:
            raise RuntimeError(
                f"delta covers versions after {delta.since} but the cache is at {self._version}; "
                f"request store.changes_since({self._version})"
            )
        if delta.version < self._version:
            raise RuntimeError(f"delta ends at version {delta.version}, older than the cache's {self._version}")
        if len(delta):
            values = np.empty(len(delta), dtype=object)
            values[:] = delta.packed
            self._entries[np.asarray(delta.slot, dtype=np.int64), np.asarray(delta.sample_index)] = values
        self._version = delta.version
        self._lineage = delta.lineage


# --------------------------------------------------------------------------- store


def _write_npz(file: BinaryIO, arrays: dict[str, np.ndarray | bytes]) -> None:
    """Write an NPZ archive that np.load(..., allow_pickle=False) reads.

    Like np.savez_compressed, but deflate level 1, and ``bytes`` values are
    written as stored (not deflated) uint8 arrays without an intermediate copy:
    the entry bytes are compact already, and deflating hundreds of MiB would
    take most of a snapshot's time.
    """
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
        for key, value in arrays.items():
            if isinstance(value, bytes):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                with zf.open(info, "w", force_zip64=True) as f:
                    header = {"descr": "|u1", "fortran_order": False, "shape": (len(value),)}
                    np.lib.format.write_array_header_2_0(f, header)
                    f.write(value)
            else:
                # A name (not a ZipInfo) opens with the archive's deflate level.
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _read_npz_bytes(npz: Any, key: str) -> bytes:
    """A uint8 member of an open NpzFile as bytes, read once (no array copy)."""
    with npz.zip.open(f"{key}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype != np.uint8 or len(shape) != 1:
            raise ValueError(f"{key} must be a (n,) uint8 array, got {shape} {dtype}")
        data = f.read()
    if len(data) != shape[0]:
        raise ValueError(f"{key} holds {len(data)} bytes, its header says {shape[0]}")
    return data


def _narrow(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits (halves what the snapshot deflates), else int64."""
    if values.size == 0 or (values.min() >= -(2**31) and values.max() < 2**31):
        return values.astype(np.int32)
    return values.astype(np.int64)


class LabelStore:
    """Global, versioned store of AIDE's corrected labels (one per job, as a Ray actor).

    Responsibilities:

    * gather workers' local lowest-k (sample, Dice) candidates and answer the
      global lowest-k (:meth:`report_candidates`, :meth:`select`);
    * keep, per label slot and sample, the current label where it differs from
      the source, and revert entries whose label returns to the source (:meth:`commit`);
    * version every commit and hand out only the changes a reader lacks (:meth:`changes_since`);
    * count label changes per epoch and slot (:meth:`stats`);
    * snapshot to NPZ (for checkpoints and actor restarts).

    Every mutating call is idempotent when retried with the same arguments, so
    the actor can run with ``max_task_retries=-1``.

    Args:
        num_samples: N; samples are identified by sample_index in [0, N).
        label_slots: S, labels kept per sample (AIDE: 2, one per network).
        shape: (H, W) of every label.
        snapshot_path: when set, a snapshot written there is loaded now (this is
            how a restarted actor recovers), every commit rewrites it atomically,
            and pending candidate reports and selections are kept next to it in
            ``<snapshot_path>.pending/``.

    Raises:
        CheckpointError: if the snapshot at ``snapshot_path`` is unreadable or
            was made for another N, S or shape.
    """

    def __init__(
        self,
        num_samples: int,
        label_slots: int,
        shape: tuple[int, int],
        snapshot_path: str | os.PathLike | None = None,
    ) -> None:
        self._table = _EntryTable(num_samples, label_slots, shape)
        self.num_samples = self._table.num_samples
        self.label_slots = self._table.label_slots
        self.shape = self._table.shape
        self.snapshot_path = None if snapshot_path is None else Path(snapshot_path)
        self._reset_labels()
        # Candidate reports per (epoch, slot) until selected; selections cached.
        self._reports: dict[tuple[int, int], dict[bytes, tuple[np.ndarray, np.ndarray]]] = {}
        self._selections: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
        if self.snapshot_path is not None:
            if self.snapshot_path.exists():
                self._load_file(self.snapshot_path)
            self._load_pending()

    # ----------------------------------------------------------------- state

    def _reset_labels(self) -> None:
        s, n = self.label_slots, self.num_samples
        self._table._entries = np.full((s, n), None, dtype=object)
        self._version = 0
        self._lineage = os.urandom(16)
        self._last_changed = np.zeros((s, n), dtype=np.int64)  # version of each entry's last change
        self._changed_epoch = np.full((s, n), -1, dtype=np.int64)  # epoch of each entry's last change
        self._corrected = np.zeros(s, dtype=np.int64)
        self._payload_bytes = 0
        self._epoch_changed: dict[int, np.ndarray] = {}  # epoch -> (S,) labels changed
        self._commit_versions: dict[bytes, int] = {}  # commit digest -> version it produced
        # Change log: (version, slot, sample indices), makes changes_since O(changes).
        # Versions <= _log_floor are only answered by scanning _last_changed.
        self._log: list[tuple[int, int, np.ndarray]] = []
        self._log_versions: list[int] = []
        self._log_size = 0
        self._log_floor = 0

    @property
    def version(self) -> int:
        """Current version: 0 when empty, +1 per commit."""
        return self._version

    @property
    def _entries(self) -> np.ndarray:
        return self._table._entries

    # ----------------------------------------------------------------- selection

    def report_candidates(self, epoch: int, slot: int, sample_index: np.ndarray, scores: np.ndarray) -> None:
        """Add one worker's local lowest-k candidates for (epoch, slot).

        Reports accumulate until :meth:`select` answers (epoch, slot); reports
        arriving after that are ignored, which keeps the answer fixed. A sample
        reported more than once (a retried worker) counts once, with its lowest
        score.

        Args:
            epoch: epoch >= 0.
            slot: the slot whose labels are scored, in [0, label_slots).
            sample_index: (n,) integer sample indices.
            scores: (n,) float32 scores (Dice; lower is corrected first), finite.

        Raises:
            ValueError: on lengths that differ, indices out of range or non-finite scores.
        """
        epoch = _check_int(epoch, "epoch", 0)
        slot = self._table._check_slot(slot)
        idx = _check_indices(sample_index, self.num_samples)
        scores = np.asarray(scores)
        if scores.shape != idx.shape:
            raise ValueError(f"scores must have shape {idx.shape} like sample_index, got {scores.shape}")
        if scores.size and not np.issubdtype(scores.dtype, np.floating):
            raise TypeError(f"scores must be a float array, got dtype {scores.dtype}")
        scores = scores.astype(np.float32, copy=False)
        if not np.isfinite(scores).all():
            bad = idx[~np.isfinite(scores)]
            raise ValueError(f"scores must be finite, got NaN/inf for sample_index {bad[:5].tolist()}")
        key = (epoch, slot)
        if key in self._selections:
            return
        digest = hashlib.blake2b(idx.tobytes() + scores.tobytes(), digest_size=16).digest()
        reports = self._reports.setdefault(key, {})
        if digest in reports:
            return
        reports[digest] = (idx.copy(), scores.copy())
        if self.snapshot_path is not None:
            self._write_pending(
                f"report-e{epoch}-s{slot}-{digest.hex()}.npz",
                {"epoch": np.int64(epoch), "slot": np.int64(slot), "sample_index": idx, "scores": scores},
            )

    def select(self, epoch: int, slot: int, k: int) -> np.ndarray:
        """The global lowest-k among the candidates reported for (epoch, slot).

        Ordered by score, ties by sample_index. The first call fixes the answer;
        every later call (from any worker, or after an actor restart) returns it.
        Call it once every worker has reported. Fewer than k candidates: all are
        returned.

        Args:
            epoch: epoch >= 0.
            slot: label slot in [0, label_slots).
            k: number of samples to select, >= 0.

        Returns:
            (min(k, candidates),) int64 sample indices, lowest score first.

        Raises:
            ValueError: if (epoch, slot) was already answered for another k.
        """
        epoch = _check_int(epoch, "epoch", 0)
        slot = self._table._check_slot(slot)
        k = _check_int(k, "k", 0)
        key = (epoch, slot)
        if key in self._selections:
            k_first, chosen = self._selections[key]
            if k_first != k:
                raise ValueError(f"select(epoch={epoch}, slot={slot}) was answered with k={k_first}, got k={k}")
            return chosen.copy()
        reports = list(self._reports.pop(key, {}).values())
        if reports:
            idx = np.concatenate([r[0] for r in reports])
            scores = np.concatenate([r[1] for r in reports])
        else:
            idx = np.zeros(0, dtype=np.int64)
            scores = np.zeros(0, dtype=np.float32)
        chosen = _lowest_k(idx, scores, k, self.num_samples)
        self._selections[key] = (k, chosen)
        # Reports and answers of epochs before the previous one are no longer asked for.
        self._prune_pending(epoch - 1)
        if self.snapshot_path is not None:
            self._write_pending(
                f"select-e{epoch}-s{slot}.npz",
                {"epoch": np.int64(epoch), "slot": np.int64(slot), "k": np.int64(k), "selection": chosen},
            )
            for path in self._pending_dir().glob(f"report-e{epoch}-s{slot}-*.npz"):
                path.unlink(missing_ok=True)
        return chosen.copy()

    # ----------------------------------------------------------------- commits

    def commit(
        self,
        epoch: int,
        slot: int,
        sample_index: np.ndarray,
        masks: np.ndarray,
        source_masks: np.ndarray,
    ) -> int:
        """Set the current label of some samples in ``slot``.

        Where ``masks[i]`` equals ``source_masks[i]`` the entry is removed (the
        label reverts to its source). Bumps the version, counts the samples whose
        label changed for (epoch, slot), and rewrites the snapshot when
        ``snapshot_path`` is set. A retried call with the same arguments changes
        nothing and returns the version of the first call.

        Args:
            epoch: epoch >= 0 in which the labels are corrected.
            slot: label slot in [0, label_slots).
            sample_index: (n,) distinct integer sample indices.
            masks: new labels, shape (n, H, W), uint8.
            source_masks: the source labels of the same samples, (n, H, W), uint8.

        Returns:
            The store's version after the commit.
        """
        idx = _check_indices(sample_index, self.num_samples)
        masks = _check_masks(masks, "masks", self.shape)
        source_masks = _check_masks(source_masks, "source_masks", self.shape)
        if masks.shape[0] != idx.size or source_masks.shape[0] != idx.size:
            raise ValueError(
                f"masks and source_masks must hold {idx.size} labels (one per sample_index), "
                f"got {masks.shape[0]} and {source_masks.shape[0]}"
            )
        return self.commit_encoded(epoch, slot, idx, encode_differences(masks, source_masks))

    def commit_encoded(
        self, epoch: int, slot: int, sample_index: np.ndarray, packed: Sequence[bytes | None]
    ) -> int:
        """:meth:`commit` with entries already made by :func:`encode_differences`.

        Args:
            epoch: epoch >= 0.
            slot: label slot in [0, label_slots).
            sample_index: (n,) distinct integer sample indices.
            packed: n entries; ``None`` reverts the sample to its source label.

        Returns:
            The store's version after the commit.
        """
        epoch = _check_int(epoch, "epoch", 0)
        slot = self._table._check_slot(slot)
        idx = _check_indices(sample_index, self.num_samples)
        packed = list(packed)
        if len(packed) != idx.size:
            raise ValueError(f"packed must hold {idx.size} entries (one per sample_index), got {len(packed)}")
        if np.unique(idx).size != idx.size:
            raise ValueError("sample_index must not repeat a sample within one commit")
        if not all(e is None or type(e) is bytes for e in packed):
            bad = next(e for e in packed if e is not None and type(e) is not bytes)
            raise TypeError(f"packed entries must be bytes from encode_differences or None, got {type(bad).__name__}")
        lengths = np.array([-1 if e is None else len(e) for e in packed], dtype=np.int64)
        if lengths.size and np.any((lengths >= 0) & (lengths < _HEADER.size)):
            raise ValueError(f"packed entries must be at least {_HEADER.size} bytes (header), got a shorter one")
        digest = hashlib.blake2b(digest_size=16)
        digest.update(struct.pack("<qq", epoch, slot))
        digest.update(idx.tobytes())
        digest.update(lengths.tobytes())
        digest.update(b"".join([e for e in packed if e is not None]))
        key = digest.digest()
        if key in self._commit_versions:
            return self._commit_versions[key]

        old_list = self._entries[slot, idx].tolist()
        changed = np.array([a != b for a, b in zip(old_list, packed)], dtype=bool)
        self._version += 1
        version = self._version
        if changed.any():
            ci = idx[changed]
            new_c = np.empty(ci.size, dtype=object)
            new_c[:] = [e for e, c in zip(packed, changed.tolist()) if c]
            old_len = np.array([-1 if e is None else len(e) for e in old_list], dtype=np.int64)[changed]
            new_len = lengths[changed]
            self._corrected[slot] += int(np.count_nonzero(new_len >= 0)) - int(np.count_nonzero(old_len >= 0))
            self._payload_bytes += int(new_len.clip(0).sum()) - int(old_len.clip(0).sum())
            self._entries[slot, ci] = new_c
            self._last_changed[slot, ci] = version
            fresh = self._changed_epoch[slot, ci] != epoch
            counts = self._epoch_changed.setdefault(epoch, np.zeros(self.label_slots, dtype=np.int64))
            counts[slot] += int(fresh.sum())
            self._changed_epoch[slot, ci] = epoch
            self._append_log(version, slot, ci)
        self._commit_versions[key] = version
        if self.snapshot_path is not None:
            self.save_snapshot(self.snapshot_path)
        return version

    def _append_log(self, version: int, slot: int, idx: np.ndarray) -> None:
        self._log.append((version, slot, idx))
        self._log_versions.append(version)
        self._log_size += idx.size
        # Beyond one record per (slot, sample) the scan of _last_changed is as
        # cheap as the log, so forget the oldest records.
        while self._log and self._log_size > self._entries.size:
            dropped_version, _, dropped = self._log.pop(0)
            self._log_versions.pop(0)
            self._log_size -= dropped.size
            self._log_floor = dropped_version

    # ----------------------------------------------------------------- reading

    def changes_since(self, version: int) -> LabelDelta:
        """Entries changed after ``version`` (each once, with its current value).

        O(changes) through the change log; versions older than the log (after a
        restore, or long ago) fall back to one vectorised scan.

        Args:
            version: a version in [0, self.version], typically a cache's.

        Returns:
            A :class:`LabelDelta` from ``version`` to the current version.
        """
        version = _check_int(version, "version", 0, self._version + 1)
        if version >= self._log_floor:
            start = bisect_right(self._log_versions, version)
            records = self._log[start:]
            if records:
                slots = np.concatenate([np.full(r[2].size, r[1], dtype=np.int64) for r in records])
                idx = np.concatenate([r[2] for r in records])
                versions = np.concatenate([np.full(r[2].size, r[0], dtype=np.int64) for r in records])
                # An entry changed several times appears once: in its last change's record.
                latest = self._last_changed[slots, idx] == versions
                slots, idx = slots[latest], idx[latest]
            else:
                slots = idx = np.zeros(0, dtype=np.int64)
        else:
            slots, idx = np.nonzero(self._last_changed > version)
        return LabelDelta(
            version=self._version,
            slot=slots.astype(np.int8),
            sample_index=idx.astype(np.int64),
            packed=self._entries[slots, idx].tolist(),
            since=version,
            num_samples=self.num_samples,
            label_slots=self.label_slots,
            shape=self.shape,
            lineage=self._lineage,
        )

    def get(self, slot: int, sample_index: int, source: np.ndarray | None = None) -> np.ndarray | None:
        """See :meth:`LabelCache.get`: None when equal to the source, else label or XOR difference."""
        return self._table.get(slot, sample_index, source)

    def current(self, slot: int, sample_index: np.ndarray, source: np.ndarray) -> np.ndarray:
        """See :meth:`LabelCache.current`."""
        return self._table.current(slot, sample_index, source)

    def stats(self) -> dict[str, Any]:
        """Counters for logs and checks.

        Returns:
            ``version``; ``corrected``: per slot, samples whose label differs from
            the source now; ``changed_per_epoch``: {epoch: per slot, labels changed
            (set or reverted) in that epoch}; ``changed_cumulative``: per slot, the
            sum over epochs; ``stored_bytes``: bytes of the stored entries.
        """
        per_epoch = {e: c.tolist() for e, c in sorted(self._epoch_changed.items())}
        total = np.zeros(self.label_slots, dtype=np.int64)
        for counts in self._epoch_changed.values():
            total += counts
        return {
            "version": self._version,
            "corrected": self._corrected.tolist(),
            "changed_per_epoch": per_epoch,
            "changed_cumulative": total.tolist(),
            "stored_bytes": int(self._payload_bytes),
        }

    def memory_bytes(self) -> int:
        """Estimated bytes held by the labels: entries (with CPython object headers) and index arrays."""
        count = int(self._corrected.sum())
        arrays = self._entries.nbytes + self._last_changed.nbytes + self._changed_epoch.nbytes
        return int(self._payload_bytes + count * _CPYTHON_BYTES_OVERHEAD + arrays + 8 * self._log_size)

    # ----------------------------------------------------------------- snapshots

    def snapshot_bytes(self) -> bytes:
        """The labels, version and statistics as NPZ bytes (no pickle).

        Candidate reports and selections are not included: they belong to an
        epoch in progress, not to a checkpoint.
        """
        buf = io.BytesIO()
        self._write_snapshot(buf)
        return buf.getvalue()

    def _write_snapshot(self, file: BinaryIO) -> None:
        slots, idx = np.nonzero(self._entries != None)  # noqa: E711
        entries = self._entries[slots, idx].tolist()
        lengths = np.fromiter(map(len, entries), np.int64, len(entries))
        epochs = np.array(sorted(self._epoch_changed), dtype=np.int64)
        changed = np.stack([self._epoch_changed[e] for e in epochs.tolist()]) if epochs.size else None
        keys = list(self._commit_versions)
        arrays = {
            "format": np.int64(SNAPSHOT_FORMAT),
            "version": np.int64(self._version),
            "num_samples": np.int64(self.num_samples),
            "label_slots": np.int64(self.label_slots),
            "shape": np.array(self.shape, dtype=np.int64),
            "entry_slot": slots.astype(np.int8),
            "entry_index": _narrow(idx),
            "entry_length": _narrow(lengths),
            "entry_data": b"".join(entries),
            "last_changed": _narrow(self._last_changed),
            "changed_epoch": _narrow(self._changed_epoch),
            "stat_epochs": epochs,
            "stat_changed": np.zeros((0, self.label_slots), np.int64) if changed is None else changed,
            "commit_keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16),
            "commit_versions": np.array([self._commit_versions[k] for k in keys], dtype=np.int64),
            "lineage": np.frombuffer(self._lineage, dtype=np.uint8),
        }
        _write_npz(file, arrays)

    def save_snapshot(self, path: str | os.PathLike) -> None:
        """Write :meth:`snapshot_bytes` to ``path`` atomically (temp file + rename)."""
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            self._write_snapshot(f)

    def load_snapshot(self, path: str | os.PathLike) -> None:
        """Replace this store's labels, version and statistics by a snapshot file.

        Used to restore a checkpoint into a running store (or actor). Pending
        reports and selections are dropped, and when ``snapshot_path`` is set the
        restored state is written there so that a restart keeps it.

        Raises:
            CheckpointError: if the file is unreadable or made for another N, S or shape.
        """
        self._load_file(Path(path))
        self._after_restore()

    def load_snapshot_bytes(self, data: bytes) -> None:
        """Like :meth:`load_snapshot`, from :meth:`snapshot_bytes` output."""
        self._load(io.BytesIO(data), "snapshot bytes")
        self._after_restore()

    @classmethod
    def from_snapshot_bytes(cls, data: bytes, snapshot_path: str | os.PathLike | None = None) -> LabelStore:
        """A new store holding exactly the labels, version and statistics of ``data``."""
        num_samples, label_slots, shape = cls._read_geometry(io.BytesIO(data), "snapshot bytes")
        store = cls(num_samples, label_slots, shape)
        store._load(io.BytesIO(data), "snapshot bytes")
        store._lineage = os.urandom(16)  # a new history starts from the snapshot
        store.snapshot_path = None if snapshot_path is None else Path(snapshot_path)
        if store.snapshot_path is not None:
            store._after_restore()
        return store

    @classmethod
    def from_snapshot_file(cls, path: str | os.PathLike) -> LabelStore:
        """A new store (without snapshot_path) holding the snapshot in ``path``."""
        return cls.from_snapshot_bytes(Path(path).read_bytes())

    def _after_restore(self) -> None:
        # From here on the history differs from the snapshot's original store.
        self._lineage = os.urandom(16)
        self._reports.clear()
        self._selections.clear()
        if self.snapshot_path is not None:
            self._prune_pending(None)
            self.save_snapshot(self.snapshot_path)

    @staticmethod
    def _read_geometry(file: Any, where: str) -> tuple[int, int, tuple[int, int]]:
        try:
            with np.load(file, allow_pickle=False) as npz:
                return int(npz["num_samples"]), int(npz["label_slots"]), tuple(int(v) for v in npz["shape"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{where} is not a label-store snapshot: {e}") from e

    def _load_file(self, path: Path) -> None:
        self._load(path, str(path))

    def _load(self, file: Any, where: str) -> None:
        try:
            with np.load(file, allow_pickle=False) as npz:
                missing = [k for k in _SNAPSHOT_KEYS if f"{k}.npy" not in npz.zip.namelist()]
                if missing:
                    raise CheckpointError(f"{where} is not a label-store snapshot: missing {missing}")
                arrays = {k: npz[k] for k in _SNAPSHOT_KEYS if k != "entry_data"}
                data = _read_npz_bytes(npz, "entry_data")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{where} is not a readable label-store snapshot: {e}") from e
        if int(arrays["format"]) != SNAPSHOT_FORMAT:
            raise CheckpointError(f"{where} has snapshot format {int(arrays['format'])}, expected {SNAPSHOT_FORMAT}")
        geometry = (int(arrays["num_samples"]), int(arrays["label_slots"]), tuple(int(v) for v in arrays["shape"]))
        if geometry != (self.num_samples, self.label_slots, self.shape):
            raise CheckpointError(
                f"{where} was made for (num_samples, label_slots, shape) = {geometry}, "
                f"this store has {(self.num_samples, self.label_slots, self.shape)}"
            )
        self._reset_labels()
        lengths = arrays["entry_length"].astype(np.int64)
        if int(lengths.sum()) != len(data):
            raise CheckpointError(f"{where}: entry_length sums to {int(lengths.sum())}, entry_data has {len(data)} bytes")
        ends = np.cumsum(lengths).tolist()
        entries = np.empty(len(ends), dtype=object)
        entries[:] = [data[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        slots = arrays["entry_slot"].astype(np.int64)
        self._entries[slots, arrays["entry_index"].astype(np.int64)] = entries
        self._corrected = np.bincount(slots, minlength=self.label_slots).astype(np.int64)
        self._payload_bytes = len(data)
        self._version = int(arrays["version"])
        self._last_changed = arrays["last_changed"].astype(np.int64)
        self._changed_epoch = arrays["changed_epoch"].astype(np.int64)
        self._epoch_changed = {
            int(e): row.astype(np.int64) for e, row in zip(arrays["stat_epochs"], arrays["stat_changed"])
        }
        self._commit_versions = {
            bytes(k): int(v) for k, v in zip(arrays["commit_keys"], arrays["commit_versions"].tolist())
        }
        self._lineage = arrays["lineage"].tobytes()
        self._log_floor = self._version  # older versions: scan _last_changed

    # ----------------------------------------------------------------- pending reports on disk

    def _pending_dir(self) -> Path:
        assert self.snapshot_path is not None
        return self.snapshot_path.with_name(self.snapshot_path.name + ".pending")

    def _write_pending(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        directory = self._pending_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / name) as tmp, open(tmp, "wb") as f:
            _write_npz(f, arrays)

    def _prune_pending(self, keep_from_epoch: int | None) -> None:
        """Forget reports and selections of epochs < keep_from_epoch (all when None)."""
        for store in (self._reports, self._selections):
            for key in [k for k in store if keep_from_epoch is None or k[0] < keep_from_epoch]:
                del store[key]
        if self.snapshot_path is None or not self._pending_dir().is_dir():
            return
        for path in self._pending_dir().iterdir():
            match = _PENDING_RE.match(path.name)
            if match and (keep_from_epoch is None or int(match.group(2)) < keep_from_epoch):
                path.unlink(missing_ok=True)

    def _load_pending(self) -> None:
        directory = self._pending_dir()
        if not directory.is_dir():
            return
        for path in sorted(directory.iterdir()):
            if not _PENDING_RE.match(path.name):
                continue  # temp files of an interrupted write
            try:
                with np.load(path, allow_pickle=False) as npz:
                    key = (int(npz["epoch"]), int(npz["slot"]))
                    if path.name.startswith("select-"):
                        self._selections[key] = (int(npz["k"]), npz["selection"].astype(np.int64))
                    else:
                        digest = bytes.fromhex(path.stem.rsplit("-", 1)[1])
                        report = (npz["sample_index"].astype(np.int64), npz["scores"].astype(np.float32))
                        self._reports.setdefault(key, {})[digest] = report
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                raise CheckpointError(f"{path} is not a readable pending report: {e}") from e
        for key in self._selections:
            self._reports.pop(key, None)


# --------------------------------------------------------------------------- Ray actor


def create_label_store_actor(
    num_samples: int,
    label_slots: int,
    shape: tuple[int, int],
    snapshot_path: str | os.PathLike | None,
    name: str | None = None,
    *,
    lifetime: str | None = None,
) -> Any:
    """Start a :class:`LabelStore` as a Ray actor and return its handle.

    With a ``snapshot_path`` the actor restarts without limit (``max_restarts=-1``)
    and its calls are retried (``max_task_retries=-1``): a restart re-runs
    ``__init__`` with these arguments, which reloads the latest snapshot and the
    pending reports, and every method is idempotent, so a retried call neither
    loses nor duplicates a label. Without one a restart would come back empty, so
    the actor is then not restarted and a crash surfaces as ActorDiedError.

    Args:
        num_samples, label_slots, shape, snapshot_path: as for :class:`LabelStore`.
        name: optional actor name (``ray.get_actor(name)`` finds it); an existing
            actor of that name is returned instead of starting a second one.
        lifetime: Ray actor lifetime (None or "detached").

    Returns:
        A Ray actor handle exposing the :class:`LabelStore` methods.
    """
    import ray  # only the wrapper needs Ray

    restartable = snapshot_path is not None
    options: dict[str, Any] = {
        "max_restarts": -1 if restartable else 0,
        "max_task_retries": -1 if restartable else 0,
        "num_cpus": 0,
        "lifetime": lifetime,
    }
    if name is not None:
        options.update(name=name, get_if_exists=True)
    snapshot = None if snapshot_path is None else str(snapshot_path)
    return ray.remote(LabelStore).options(**options).remote(num_samples, label_slots, shape, snapshot)
