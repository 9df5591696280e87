"""An epoch's corrections, staged by every worker, until the epoch is published as one version.

AIDE corrects labels once per epoch, and the workers that hold the winners each
write some of them. Written one worker at a time, a store killed meanwhile once
left an epoch half applied (20 of its 28 corrections for one net). So the
workers only *stage* their rows here; one :meth:`LabelStore.publish` then applies
every staged row of the epoch as a single version, or none of them.
:class:`StagedCorrections` keeps the staged rows per epoch, each staging call
once (by the digest of its content), and, with a pending folder, on disk too,
so that a restarted store actor still holds what was staged before the crash.

This file is its own module because staging shares nothing with the stored
labels or the candidate selection: :class:`LabelStore` checks the arguments
and delegates here.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

from aide_ray.labels.snapshot import Staged, read_staged, remove_pending, write_pending

__all__ = ["StagedCorrections", "publish_key"]


def publish_key(epoch: int) -> bytes:
    """The 16-byte commit key of an epoch's publication: a retried publish finds its version under it."""
    return hashlib.blake2b(b"publish" + struct.pack("<q", epoch), digest_size=16).digest()


class StagedCorrections:
    """Staged rows per epoch until published. Arguments are trusted: :class:`LabelStore` checks them.

    Attributes:
        pending: folder where every staging call is also written (and read back by
            :meth:`load`); None keeps them in memory only.
        staged: epoch -> {digest: (slot, sample_index (n,) int64, n entries)}.
    """

    def __init__(self, pending: Path | None = None) -> None:
        self.pending = pending
        self.staged: Staged = {}

    def load(self) -> None:
        """Replace the staged rows by those kept in the pending folder (if any)."""
        if self.pending is not None:
            self.staged = read_staged(self.pending)

    def stage(self, epoch: int, slot: int, idx: np.ndarray, packed: list, lengths: np.ndarray) -> None:
        """Stage ``packed`` (entries, ``lengths`` (n,) int64, -1 for None) for ``idx`` in ``slot``; once per content."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(struct.pack("<qq", epoch, slot))
        digest.update(idx.tobytes())
        digest.update(lengths.tobytes())
        digest.update(b"".join(e for e in packed if e is not None))
        key = digest.digest()
        rows = self.staged.setdefault(epoch, {})
        if key in rows:
            return
        rows[key] = (slot, idx.copy(), list(packed))
        if self.pending is not None:
            write_pending(self.pending, f"stage-e{epoch}-s{slot}-{key.hex()}.npz", {
                "epoch": np.int64(epoch), "slot": np.int64(slot), "sample_index": idx,
                "entry_length": lengths, "entry_data": b"".join(e for e in packed if e is not None),
            })

    def rows(self, epoch: int, label_slots: int) -> dict[int, tuple[np.ndarray, list]]:
        """Every row staged for ``epoch``, per slot: (sample_index (n,) int64, n entries), in a fixed order.

        The order (by staging digest) does not depend on which worker staged first,
        so a retried publication applies the same commit.

        Raises:
            ValueError: if a sample was staged twice for one slot of the epoch.
        """
        out: dict[int, tuple[np.ndarray, list]] = {}
        for slot in range(label_slots):
            parts = [rows for _, rows in sorted(self.staged.get(epoch, {}).items()) if rows[0] == slot]
            idx = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
            if np.unique(idx).size != idx.size:
                repeated = np.flatnonzero(np.bincount(idx) > 1)
                raise ValueError(f"epoch {epoch}, slot {slot}: a sample must be staged once per epoch, "
                                 f"got sample_index {repeated[:5].tolist()} more than once")
            out[slot] = (idx, [e for p in parts for e in p[2]])
        return out

    def prune(self, up_to_epoch: int | None) -> None:
        """Forget the rows of epochs <= ``up_to_epoch`` (all when None), in memory and on disk."""
        for epoch in [e for e in self.staged if up_to_epoch is None or e <= up_to_epoch]:
            del self.staged[epoch]
        if self.pending is not None:
            remove_pending(self.pending, None if up_to_epoch is None else up_to_epoch + 1, kinds=("stage",))
