"""The label store's versioned state: entries, version, change log, per-epoch counters, commit keys.

Every commit to the label store bumps a version; readers (worker caches) ask for
the entries changed since the version they hold, and AIDE's logs count the
labels changed per epoch and slot. :class:`LabelHistory` is that state and its
bookkeeping, exactly what a snapshot captures (:meth:`LabelHistory.state`,
:meth:`LabelHistory.restore`).

This file is its own module because it is the store's state without the store's
duties: :class:`LabelStore` checks arguments, runs the candidate selection and
writes snapshots, and calls this with arguments already checked.
"""

from __future__ import annotations

import hashlib
import os
import struct
from bisect import bisect_right
from typing import Any

import numpy as np

from aide_ray.labels.cache import EntryTable, LabelDelta
from aide_ray.labels.snapshot import SnapshotState

__all__ = ["LabelHistory"]

_CPYTHON_BYTES_OVERHEAD = 33  # sys.getsizeof(b"") on 64-bit CPython


class LabelHistory:
    """Versioned (slot, sample) entries of one store, with their change log and counters.

    Args:
        table: the entry table it fills (the store reads labels through it).

    Attributes:
        version: 0 when empty, +1 per commit.
        lineage: 16 random bytes naming this history (a restore starts a new one).
        last_changed: (S, N) int64, the version of each entry's last change.
        changed_epoch: (S, N) int64, the epoch of each entry's last change (-1: never).
        commit_versions: {16-byte commit digest: version that commit produced}.
        log_floor: versions <= log_floor are answered by scanning ``last_changed``.
    """

    def __init__(self, table: EntryTable) -> None:
        self.table = table
        self.reset()

    def reset(self) -> None:
        """Back to version 0 with no entries, a new lineage and no counters."""
        s, n = self.table.label_slots, self.table.num_samples
        self.table.entries = np.full((s, n), None, dtype=object)
        self.version = 0
        self.lineage = os.urandom(16)
        self.last_changed = np.zeros((s, n), dtype=np.int64)
        self.changed_epoch = np.full((s, n), -1, dtype=np.int64)
        self._corrected = np.zeros(s, dtype=np.int64)
        self._payload_bytes = 0
        self._epoch_changed: dict[int, np.ndarray] = {}  # epoch -> (S,) labels changed
        self.commit_versions: dict[bytes, int] = {}
        # Change log: (version, slot, sample indices), makes changes_since O(changes).
        self._log: list[tuple[int, int, np.ndarray]] = []
        self._log_versions: list[int] = []
        self._log_size = 0
        self.log_floor = 0

    @property
    def entries(self) -> np.ndarray:
        """(S, N) object array of entries; ``None`` where the label equals its source."""
        return self.table.entries

    def commit(
        self, epoch: int, slot: int, idx: np.ndarray, packed: list[bytes | None], lengths: np.ndarray
    ) -> tuple[int, bool]:
        """Set the entries of ``idx`` in ``slot`` (checked arguments; see :meth:`LabelStore.commit_encoded`).

        Args:
            epoch: epoch of the change, >= 0.
            slot: label slot.
            idx: (n,) int64 distinct sample indices.
            packed: n entries (``None``: back to the source label).
            lengths: (n,) int64 byte lengths of ``packed``, -1 for ``None``.

        Returns:
            (version after the commit, whether it is new): a commit already made
            with the same arguments changes nothing and returns its version.
        """
        digest = hashlib.blake2b(digest_size=16)
        digest.update(struct.pack("<qq", epoch, slot))
        digest.update(idx.tobytes())
        digest.update(lengths.tobytes())
        digest.update(b"".join([e for e in packed if e is not None]))
        return self.apply(digest.digest(), epoch, [(slot, idx, packed, lengths)])

    def apply(self, key: bytes, epoch: int, parts: list[tuple[int, np.ndarray, list, np.ndarray]]) -> tuple[int, bool]:
        """Apply ``parts`` ((slot, idx, packed, lengths) each, as for :meth:`commit`) as ONE version.

        Args:
            key: 16 bytes naming the change; a key already applied changes nothing.
            epoch: epoch of the change, >= 0.
            parts: one per slot (a slot at most once), arguments checked.

        Returns:
            (version the key produced, whether it is new).
        """
        if key in self.commit_versions:
            return self.commit_versions[key], False
        self.version += 1
        for slot, idx, packed, lengths in parts:
            self._set(epoch, slot, idx, packed, lengths)
        self.commit_versions[key] = self.version
        return self.version, True

    def _set(self, epoch: int, slot: int, idx: np.ndarray, packed: list[bytes | None], lengths: np.ndarray) -> None:
        old_list = self.entries[slot, idx].tolist()
        changed = np.array([a != b for a, b in zip(old_list, packed)], dtype=bool)
        if not changed.any():
            return
        version = self.version
        ci = idx[changed]
        new_c = np.empty(ci.size, dtype=object)
        new_c[:] = [e for e, c in zip(packed, changed.tolist()) if c]
        old_len = np.array([-1 if e is None else len(e) for e in old_list], dtype=np.int64)[changed]
        new_len = lengths[changed]
        self._corrected[slot] += int(np.count_nonzero(new_len >= 0)) - int(np.count_nonzero(old_len >= 0))
        self._payload_bytes += int(new_len.clip(0).sum()) - int(old_len.clip(0).sum())
        self.entries[slot, ci] = new_c
        self.last_changed[slot, ci] = version
        fresh = self.changed_epoch[slot, ci] != epoch
        counts = self._epoch_changed.setdefault(epoch, np.zeros(self.table.label_slots, dtype=np.int64))
        counts[slot] += int(fresh.sum())
        self.changed_epoch[slot, ci] = epoch
        self._append_log(version, slot, ci)

    def _append_log(self, version: int, slot: int, idx: np.ndarray) -> None:
        self._log.append((version, slot, idx))
        self._log_versions.append(version)
        self._log_size += idx.size
        # Beyond one record per (slot, sample) the scan of last_changed is as
        # cheap as the log, so forget the oldest records.
        while self._log and self._log_size > self.entries.size:
            dropped_version, _, dropped = self._log.pop(0)
            self._log_versions.pop(0)
            self._log_size -= dropped.size
            self.log_floor = dropped_version

    def changes_since(self, version: int) -> LabelDelta:
        """Entries changed after ``version`` in [0, self.version]; see :meth:`LabelStore.changes_since`."""
        if version >= self.log_floor:
            start = bisect_right(self._log_versions, version)
            records = self._log[start:]
            if records:
                slots = np.concatenate([np.full(r[2].size, r[1], dtype=np.int64) for r in records])
                idx = np.concatenate([r[2] for r in records])
                versions = np.concatenate([np.full(r[2].size, r[0], dtype=np.int64) for r in records])
                # An entry changed several times appears once: in its last change's record.
                latest = self.last_changed[slots, idx] == versions
                slots, idx = slots[latest], idx[latest]
            else:
                slots = idx = np.zeros(0, dtype=np.int64)
        else:
            slots, idx = np.nonzero(self.last_changed > version)
        return LabelDelta(
            version=self.version,
            slot=slots.astype(np.int8),
            sample_index=idx.astype(np.int64),
            packed=self.entries[slots, idx].tolist(),
            since=version,
            num_samples=self.table.num_samples,
            label_slots=self.table.label_slots,
            shape=self.table.shape,
            lineage=self.lineage,
        )

    def stats(self) -> dict[str, Any]:
        """See :meth:`LabelStore.stats`."""
        per_epoch = {e: c.tolist() for e, c in sorted(self._epoch_changed.items())}
        total = np.zeros(self.table.label_slots, dtype=np.int64)
        for counts in self._epoch_changed.values():
            total += counts
        return {
            "version": self.version,
            "corrected": self._corrected.tolist(),
            "changed_per_epoch": per_epoch,
            "changed_cumulative": total.tolist(),
            "stored_bytes": int(self._payload_bytes),
        }

    def memory_bytes(self) -> int:
        """See :meth:`LabelStore.memory_bytes`."""
        count = int(self._corrected.sum())
        arrays = self.entries.nbytes + self.last_changed.nbytes + self.changed_epoch.nbytes
        return int(self._payload_bytes + count * _CPYTHON_BYTES_OVERHEAD + arrays + 8 * self._log_size)

    def state(self) -> SnapshotState:
        """Everything a snapshot keeps (arrays shared, not copied: write it before the next commit)."""
        slots, idx = np.nonzero(self.entries != None)  # noqa: E711
        return SnapshotState(
            num_samples=self.table.num_samples,
            label_slots=self.table.label_slots,
            shape=self.table.shape,
            version=self.version,
            entry_slot=slots,
            entry_index=idx,
            entries=self.entries[slots, idx].tolist(),
            last_changed=self.last_changed,
            changed_epoch=self.changed_epoch,
            epoch_changed=self._epoch_changed,
            commit_versions=self.commit_versions,
            lineage=self.lineage,
        )

    def restore(self, state: SnapshotState) -> None:
        """Replace everything by ``state`` (same geometry); the change log restarts empty."""
        self.reset()
        entries = np.empty(len(state.entries), dtype=object)
        entries[:] = state.entries
        self.entries[state.entry_slot, state.entry_index] = entries
        self._corrected = np.bincount(state.entry_slot, minlength=self.table.label_slots).astype(np.int64)
        self._payload_bytes = sum(map(len, state.entries))
        self.version = state.version
        self.last_changed = state.last_changed
        self.changed_epoch = state.changed_epoch
        self._epoch_changed = state.epoch_changed
        self.commit_versions = state.commit_versions
        self.lineage = state.lineage
        self.log_floor = self.version  # older versions: scan last_changed
