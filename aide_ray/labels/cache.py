"""The worker side of the label store: deltas, the (slot, sample) entry table and LabelCache.

Every training worker needs the corrected labels of the samples in its batches
but must not ask the store for each batch. :class:`LabelCache` keeps a copy of
the store's entries, brought up to date with the :class:`LabelDelta` that
:meth:`LabelStore.changes_since` hands out, and overlays the corrections onto a
batch's source labels (:meth:`LabelCache.current`). The entry table it is built
on is shared with the store, so both read labels the same way.

This file is its own module because the workers need only this and the codec,
not the store's selection, commit and snapshot machinery.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aide_ray.labels.codec import MAX_SIDE, apply_difference, check_masks

__all__ = ["LabelDelta", "LabelCache", "EntryTable", "check_int", "check_indices", "check_geometry"]


def check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high) (or >= low when ``high`` is None), or an error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_indices(sample_index: Any, num_samples: int, name: str = "sample_index") -> np.ndarray:
    """``sample_index`` as an (n,) int64 array of samples in [0, num_samples), or an error naming ``name``."""
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


def check_geometry(num_samples: Any, label_slots: Any, shape: Any) -> tuple[int, int, tuple[int, int]]:
    """(num_samples, label_slots, (H, W)) as ints, checked: N >= 1, 1 <= S < 128, 1 <= H, W <= 65535."""
    num_samples = check_int(num_samples, "num_samples", 1)
    label_slots = check_int(label_slots, "label_slots", 1, 128)  # slot is int8 in deltas
    if len(tuple(shape)) != 2:
        raise ValueError(f"shape must be (H, W), got {shape!r}")
    height = check_int(tuple(shape)[0], "shape[0]", 1, MAX_SIDE + 1)
    width = check_int(tuple(shape)[1], "shape[1]", 1, MAX_SIDE + 1)
    return num_samples, label_slots, (height, width)


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


class EntryTable:
    """(slot, sample) -> entry table shared by the store and the worker cache.

    Attributes:
        entries: (label_slots, num_samples) object array of entries (``None``:
            the label equals its source). The store replaces it on a restore.
    """

    def __init__(self, num_samples: int, label_slots: int, shape: tuple[int, int]) -> None:
        self.num_samples, self.label_slots, self.shape = check_geometry(num_samples, label_slots, shape)
        # One object array rather than dicts: 8 bytes per (slot, sample) and
        # vectorised fancy indexing for deltas.
        self.entries = np.full((self.label_slots, self.num_samples), None, dtype=object)

    def check_slot(self, slot: Any) -> int:
        """``slot`` as an int in [0, label_slots), or an error."""
        return check_int(slot, "slot", 0, self.label_slots)

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
        slot = self.check_slot(slot)
        i = check_int(sample_index, "sample_index", 0, self.num_samples)
        entry = self.entries[slot, i]
        if entry is None:
            return None
        if source is None:
            base = np.zeros(self.shape, dtype=np.uint8)
        else:
            base = check_masks(np.asarray(source)[None], "source", self.shape)[0].copy()
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
        slot = self.check_slot(slot)
        idx = check_indices(sample_index, self.num_samples)
        out = check_masks(source, "source", self.shape).copy()
        if out.shape[0] != idx.size:
            raise ValueError(f"source must have {idx.size} labels (one per sample_index), got {out.shape[0]}")
        for b, entry in enumerate(self.entries[slot, idx].tolist()):
            if entry is not None:
                apply_difference(out[b], entry)
        return out

    def num_corrected(self, slot: int) -> int:
        """Number of samples whose label in ``slot`` differs from the source."""
        return int(np.count_nonzero(self.entries[self.check_slot(slot)] != None))  # noqa: E711


class LabelCache(EntryTable):
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
        self.entries[...] = None
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
            self.entries[np.asarray(delta.slot, dtype=np.int64), np.asarray(delta.sample_index)] = values
        self._version = delta.version
        self._lineage = delta.lineage
