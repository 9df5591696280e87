"""Global lowest-k selection of AIDE's correction candidates, across workers and restarts.

Each worker scores only its shard, so it reports its local lowest-k (sample,
Dice) candidates; the global lowest-k among all reports is the set AIDE
corrects. :class:`CandidateBoard` keeps the reports per (epoch, slot) until the
first :meth:`~CandidateBoard.select`, then fixes that answer for every later
caller. With a pending folder every report and answer is also written there, so
that a restarted store actor answers exactly as before.

This file is its own module because selection shares nothing with the stored
labels: :class:`LabelStore` validates the arguments and delegates here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from aide_ray.labels.snapshot import Reports, Selections, read_pending, remove_pending, write_pending

__all__ = ["CandidateBoard", "lowest_k"]


def lowest_k(idx: np.ndarray, scores: np.ndarray, k: int, num_samples: int) -> np.ndarray:
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


class CandidateBoard:
    """Candidate reports per (epoch, slot) until answered, and the fixed answers.

    Arguments are trusted: :class:`LabelStore` checks them first.

    Attributes:
        pending: folder where every report and answer is also written (and
            read back by :meth:`load`); None keeps them in memory only.
        reports: (epoch, slot) -> {digest: (sample_index, scores)}, unanswered keys only.
        selections: (epoch, slot) -> (k, answer).
    """

    def __init__(self, pending: Path | None = None) -> None:
        self.pending = pending
        self.reports: Reports = {}
        self.selections: Selections = {}

    def load(self) -> None:
        """Replace the reports and answers by those kept in the pending folder (if any)."""
        if self.pending is not None:
            self.reports, self.selections = read_pending(self.pending)

    def report(self, epoch: int, slot: int, idx: np.ndarray, scores: np.ndarray) -> None:
        """Add one report, (n,) int64 ``idx`` and (n,) float32 ``scores``; see :meth:`LabelStore.report_candidates`."""
        key = (epoch, slot)
        if key in self.selections:
            return
        digest = hashlib.blake2b(idx.tobytes() + scores.tobytes(), digest_size=16).digest()
        reports = self.reports.setdefault(key, {})
        if digest in reports:
            return
        reports[digest] = (idx.copy(), scores.copy())
        if self.pending is not None:
            write_pending(
                self.pending,
                f"report-e{epoch}-s{slot}-{digest.hex()}.npz",
                {"epoch": np.int64(epoch), "slot": np.int64(slot), "sample_index": idx, "scores": scores},
            )

    def select(self, epoch: int, slot: int, k: int, num_samples: int) -> np.ndarray:
        """The fixed global lowest-k of (epoch, slot); see :meth:`LabelStore.select`.

        Returns:
            (min(k, candidates),) int64 sample indices (a copy), lowest score first.
        """
        key = (epoch, slot)
        if key in self.selections:
            k_first, chosen = self.selections[key]
            if k_first != k:
                raise ValueError(f"select(epoch={epoch}, slot={slot}) was answered with k={k_first}, got k={k}")
            return chosen.copy()
        reports = list(self.reports.pop(key, {}).values())
        if reports:
            idx = np.concatenate([r[0] for r in reports])
            scores = np.concatenate([r[1] for r in reports])
        else:
            idx = np.zeros(0, dtype=np.int64)
            scores = np.zeros(0, dtype=np.float32)
        chosen = lowest_k(idx, scores, k, num_samples)
        self.selections[key] = (k, chosen)
        # Reports and answers of epochs before the previous one are no longer asked for.
        self.prune(epoch - 1)
        if self.pending is not None:
            write_pending(
                self.pending,
                f"select-e{epoch}-s{slot}.npz",
                {"epoch": np.int64(epoch), "slot": np.int64(slot), "k": np.int64(k), "selection": chosen},
            )
            for path in self.pending.glob(f"report-e{epoch}-s{slot}-*.npz"):
                path.unlink(missing_ok=True)
        return chosen.copy()

    def prune(self, keep_from_epoch: int | None) -> None:
        """Forget reports and answers of epochs < keep_from_epoch (all when None), in memory and on disk."""
        for store in (self.reports, self.selections):
            for key in [k for k in store if keep_from_epoch is None or k[0] < keep_from_epoch]:
                del store[key]
        if self.pending is not None:
            remove_pending(self.pending, keep_from_epoch)
