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
makes each call idempotent and durable (snapshot after each publication), and
delegates the work to its parts, none of which needs Ray: its state and
snapshots (:mod:`~aide_ray.labels.durable`), the candidate
selection (:mod:`~aide_ray.labels.selection`), the staged corrections
(:mod:`~aide_ray.labels.staging`), the versioned labels
(:mod:`~aide_ray.labels.history`), the entry table shared with the worker cache
(:mod:`~aide_ray.labels.cache`) and the file format (:mod:`~aide_ray.labels.snapshot`).
See docs/label_store.md for the format, versioning and restart semantics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from aide_ray.labels.cache import LabelDelta, check_indices, check_int
from aide_ray.labels.codec import check_masks, encode_differences, entry_lengths
from aide_ray.labels.durable import DurableLabels
from aide_ray.labels.staging import publish_key

__all__ = ["LabelStore"]


class LabelStore(DurableLabels):
    """Global, versioned store of AIDE's corrected labels (one per job, as a Ray actor).

    Responsibilities:

    * gather workers' local lowest-k (sample, Dice) candidates and answer the
      global lowest-k (:meth:`report_candidates`, :meth:`select`);
    * keep, per label slot and sample, the current label where it differs from
      the source, and revert entries whose label returns to the source;
    * take an epoch's corrections from every worker (:meth:`stage`) and apply
      them all as one version, or none (:meth:`publish`); :meth:`commit` writes at once;
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
            and pending candidate reports, selections and staged rows are kept
            next to it in ``<snapshot_path>.pending/``.
        run_token: the training run this store serves. With a token, the snapshot
            at ``snapshot_path`` (and its pending files) is loaded only if that run
            wrote it; another run's is ignored with a printed message and replaced
            by this store's empty one. None loads any snapshot (tools, tests).

    Raises:
        CheckpointError: if this run's snapshot at ``snapshot_path`` is unreadable
            or was made for another N, S or shape.
    """

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

    def stage(self, epoch: int, slot: int, sample_index: np.ndarray, packed: Sequence[bytes | None]) -> int:
        """Stage one worker's corrections of ``epoch`` for ``slot``; :meth:`publish` applies them.

        Idempotent: the same content staged again (a retried call) is kept once.
        With a ``snapshot_path`` it is written to the pending folder before the
        call returns, so a restarted store still holds it.

        Args:
            epoch: epoch >= 0.
            slot: label slot in [0, label_slots) that receives the labels.
            sample_index: (n,) distinct integer sample indices.
            packed: n entries from :func:`encode_differences`; ``None`` reverts to the source.

        Returns:
            n, the rows staged by this call.
        """
        epoch = check_int(epoch, "epoch", 0)
        slot = self._table.check_slot(slot)
        idx = check_indices(sample_index, self.num_samples)
        packed = list(packed)
        if len(packed) != idx.size:
            raise ValueError(f"packed must hold {idx.size} entries (one per sample_index), got {len(packed)}")
        self._staged.stage(epoch, slot, idx, packed, entry_lengths(packed))
        return int(idx.size)

    def publish(self, epoch: int, expected: dict[int, int]) -> int:
        """Apply every row staged for ``epoch`` as ONE new version, or nothing.

        The rows staged per slot must number exactly ``expected[slot]`` (the
        workers' own counts, gathered; a slot left out expects 0), else nothing
        is applied. Idempotent: a retry (after an actor restart too) returns the
        version of the first call. The snapshot is written before the epoch's
        staged files are dropped.

        Args:
            epoch: epoch >= 0.
            expected: slot -> rows the workers staged for it.

        Returns:
            The version that holds the epoch's corrections.

        Raises:
            ValueError: staged rows differ from ``expected`` (a staging call was
                lost), or a sample was staged twice for one slot.
        """
        epoch = check_int(epoch, "epoch", 0)
        key = publish_key(epoch)
        if key not in self._history.commit_versions:
            rows = self._staged.rows(epoch, self.label_slots)
            for slot in range(self.label_slots):
                want, got = int(expected.get(slot, 0)), int(rows[slot][0].size)
                if want != got:
                    raise ValueError(f"publish(epoch={epoch}): slot {slot} must have {want} staged rows (the "
                                     f"workers' count), got {got}; nothing of the epoch was applied")
            parts = [(slot, idx, packed, entry_lengths(packed)) for slot, (idx, packed) in rows.items() if idx.size]
            self._history.apply(key, epoch, parts)
            self._before_publish_is_written(epoch)
            if self.snapshot_path is not None:
                self.save_snapshot(self.snapshot_path)
        self._staged.prune(epoch)
        return self._history.commit_versions[key]

    def _before_publish_is_written(self, epoch: int) -> None:
        """Called between applying a publication in memory and writing it (the fault tests' kill point)."""

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
