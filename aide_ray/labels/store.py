"""AIDE's global label-correction store: corrected labels, versioned, with deltas and snapshots.

AIDE (Wang, Li et al., "Annotation-efficient deep learning for automatic medical
image segmentation", Nat. Commun. 2021) replaces, at the end of some epochs, the
labels of the training samples on which a network agrees least with its label
(lowest Dice) by that network's prediction. In a distributed run every worker
sees only its shard, so the selection must be global and the corrected labels
must reach every worker. :class:`LabelStore` is that shared state: one per job
(run as a Ray actor by :mod:`aide_ray.distributed.label_actor`, or in-process).

It keeps, for each (slot, sample), the current label only where it differs from
the source label, as one entry of :mod:`aide_ray.labels.codec`; it never needs
the source labels except at commit, since readers XOR the entry back onto the
source they already have. This file is the store's public face, its own module
because it is what callers and the Ray actor see: it checks every argument,
makes each call idempotent and durable (snapshot after each commit), and
delegates the work to its parts, none of which needs Ray: the candidate
selection (:mod:`~aide_ray.labels.selection`), the versioned labels
(:mod:`~aide_ray.labels.history`), the entry table shared with the worker cache
(:mod:`~aide_ray.labels.cache`) and the file format (:mod:`~aide_ray.labels.snapshot`).
See docs/label_store.md for the format, versioning and restart semantics.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aide_ray._internal.io import atomic_file
from aide_ray.labels.cache import EntryTable, LabelDelta, check_indices, check_int
from aide_ray.labels.codec import check_masks, encode_differences, entry_lengths
from aide_ray.labels.history import LabelHistory
from aide_ray.labels.selection import CandidateBoard
from aide_ray.labels.snapshot import pending_dir, read_geometry, read_snapshot, write_snapshot

__all__ = ["LabelStore"]


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
        self._table = EntryTable(num_samples, label_slots, shape)
        self.num_samples = self._table.num_samples
        self.label_slots = self._table.label_slots
        self.shape = self._table.shape
        # The labels and their versions, counters and commit keys (what a snapshot holds).
        self._history = LabelHistory(self._table)
        # Candidate reports per (epoch, slot) until selected; selections cached.
        self._candidates = CandidateBoard()
        self.snapshot_path = snapshot_path
        if self.snapshot_path is not None:
            if self.snapshot_path.exists():
                self._history.restore(read_snapshot(self.snapshot_path, str(self.snapshot_path), self._geometry))
            self._candidates.load()

    # ----------------------------------------------------------------- state

    @property
    def snapshot_path(self) -> Path | None:
        """Where every commit writes the snapshot (None: nowhere); pending reports go beside it."""
        return self._snapshot_path

    @snapshot_path.setter
    def snapshot_path(self, path: str | os.PathLike | None) -> None:
        self._snapshot_path = None if path is None else Path(path)
        self._candidates.pending = None if self._snapshot_path is None else pending_dir(self._snapshot_path)

    @property
    def version(self) -> int:
        """Current version: 0 when empty, +1 per commit."""
        return self._history.version

    @property
    def _geometry(self) -> tuple[int, int, tuple[int, int]]:
        return self.num_samples, self.label_slots, self.shape

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
        epoch = check_int(epoch, "epoch", 0)
        slot = self._table.check_slot(slot)
        idx = check_indices(sample_index, self.num_samples)
        scores = np.asarray(scores)
        if scores.shape != idx.shape:
            raise ValueError(f"scores must have shape {idx.shape} like sample_index, got {scores.shape}")
        if scores.size and not np.issubdtype(scores.dtype, np.floating):
            raise TypeError(f"scores must be a float array, got dtype {scores.dtype}")
        scores = scores.astype(np.float32, copy=False)
        if not np.isfinite(scores).all():
            bad = idx[~np.isfinite(scores)]
            raise ValueError(f"scores must be finite, got NaN/inf for sample_index {bad[:5].tolist()}")
        self._candidates.report(epoch, slot, idx, scores)

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
        epoch = check_int(epoch, "epoch", 0)
        slot = self._table.check_slot(slot)
        k = check_int(k, "k", 0)
        return self._candidates.select(epoch, slot, k, self.num_samples)

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
        idx = check_indices(sample_index, self.num_samples)
        masks = check_masks(masks, "masks", self.shape)
        source_masks = check_masks(source_masks, "source_masks", self.shape)
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
        epoch = check_int(epoch, "epoch", 0)
        slot = self._table.check_slot(slot)
        idx = check_indices(sample_index, self.num_samples)
        packed = list(packed)
        if len(packed) != idx.size:
            raise ValueError(f"packed must hold {idx.size} entries (one per sample_index), got {len(packed)}")
        if np.unique(idx).size != idx.size:
            raise ValueError("sample_index must not repeat a sample within one commit")
        version, new = self._history.commit(epoch, slot, idx, packed, entry_lengths(packed))
        if new and self.snapshot_path is not None:
            self.save_snapshot(self.snapshot_path)
        return version

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
        return self._history.changes_since(check_int(version, "version", 0, self._history.version + 1))

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
        return self._history.stats()

    def memory_bytes(self) -> int:
        """Estimated bytes held by the labels: entries (with CPython object headers) and index arrays."""
        return self._history.memory_bytes()

    # ----------------------------------------------------------------- snapshots (format: labels/snapshot.py)

    def snapshot_bytes(self) -> bytes:
        """The labels, version and statistics as NPZ bytes (no pickle).

        Candidate reports and selections are not included: they belong to an
        epoch in progress, not to a checkpoint.
        """
        buf = io.BytesIO()
        write_snapshot(buf, self._history.state())
        return buf.getvalue()

    def save_snapshot(self, path: str | os.PathLike) -> None:
        """Write :meth:`snapshot_bytes` to ``path`` atomically (temp file + rename)."""
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            write_snapshot(f, self._history.state())

    def load_snapshot(self, path: str | os.PathLike) -> None:
        """Replace this store's labels, version and statistics by a snapshot file.

        Used to restore a checkpoint into a running store (or actor). Pending
        reports and selections are dropped, and when ``snapshot_path`` is set the
        restored state is written there so that a restart keeps it.

        Raises:
            CheckpointError: if the file is unreadable or made for another N, S or shape.
        """
        path = Path(path)
        self._history.restore(read_snapshot(path, str(path), self._geometry))
        self._after_restore()

    def load_snapshot_bytes(self, data: bytes) -> None:
        """Like :meth:`load_snapshot`, from :meth:`snapshot_bytes` output."""
        self._history.restore(read_snapshot(io.BytesIO(data), "snapshot bytes", self._geometry))
        self._after_restore()

    @classmethod
    def from_snapshot_bytes(cls, data: bytes, snapshot_path: str | os.PathLike | None = None) -> LabelStore:
        """A new store holding exactly the labels, version and statistics of ``data``."""
        num_samples, label_slots, shape = read_geometry(io.BytesIO(data), "snapshot bytes")
        store = cls(num_samples, label_slots, shape)
        store._history.restore(read_snapshot(io.BytesIO(data), "snapshot bytes", store._geometry))
        store._history.lineage = os.urandom(16)  # a new history starts from the snapshot
        store.snapshot_path = snapshot_path
        if store.snapshot_path is not None:
            store._after_restore()
        return store

    @classmethod
    def from_snapshot_file(cls, path: str | os.PathLike) -> LabelStore:
        """A new store (without snapshot_path) holding the snapshot in ``path``."""
        return cls.from_snapshot_bytes(Path(path).read_bytes())

    def _after_restore(self) -> None:
        # From here on the history differs from the snapshot's original store;
        # the epoch in progress (reports, answers, their files) is forgotten.
        self._history.lineage = os.urandom(16)
        self._candidates.prune(None)
        if self.snapshot_path is not None:
            self.save_snapshot(self.snapshot_path)
