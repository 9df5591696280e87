"""The label store's state and how it survives: restart snapshot (tied to its run), checkpoints, restore, reset.

:class:`~aide_ray.labels.store.LabelStore` is this state plus its checked
calls. A store with a ``snapshot_path`` (the Ray actor's) rewrites that file
after every change and reloads it when the actor restarts; the file names the
training run that wrote it (the run token), and a store of another run ignores
it, so a new run never adopts labels a killed run left behind. Checkpoints carry
:meth:`DurableLabels.snapshot_bytes`, restored with
:meth:`DurableLabels.load_snapshot_bytes`.

This file is its own module because durability (which file is loaded when, what
a restore forgets) is one concern, apart from what the store's calls compute.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from aide_ray._internal.io import atomic_file
from aide_ray.labels.cache import EntryTable
from aide_ray.labels.history import LabelHistory
from aide_ray.labels.selection import CandidateBoard
from aide_ray.labels.snapshot import (SnapshotState, pending_dir, read_geometry, read_run_token, read_snapshot,
                                      write_snapshot)
from aide_ray.labels.staging import StagedCorrections

__all__ = ["DurableLabels"]


class DurableLabels:
    """A store's state (labels, candidates, staged rows) and its snapshots; see :class:`LabelStore` for the args."""

    def __init__(
        self,
        num_samples: int,
        label_slots: int,
        shape: tuple[int, int],
        snapshot_path: str | os.PathLike | None = None,
        run_token: str | None = None,
    ) -> None:
        self._table = EntryTable(num_samples, label_slots, shape)
        self.num_samples = self._table.num_samples
        self.label_slots = self._table.label_slots
        self.shape = self._table.shape
        self.run_token = run_token or ""
        # The labels and their versions, counters and commit keys (what a snapshot holds).
        self._history = LabelHistory(self._table)
        # Candidate reports per (epoch, slot) until selected; selections cached; staged rows per epoch.
        self._candidates = CandidateBoard()
        self._staged = StagedCorrections()
        self.snapshot_path = snapshot_path
        if self.snapshot_path is not None:
            self._open_restart_snapshot(self.snapshot_path, run_token)

    def _open_restart_snapshot(self, path: Path, run_token: str | None) -> None:
        """Load this run's snapshot and pending files; ignore (and replace) another run's."""
        found = read_run_token(path) if path.exists() else None
        if run_token is None or found == run_token:
            if path.exists():
                self._history.restore(read_snapshot(path, str(path), self._geometry))
            self._candidates.load()
            self._staged.load()
            return
        if path.exists():
            written_by = "an unreadable file" if found is None else f"written by run {found or '(no token)'}"
            print(f"label store: ignoring {path} ({written_by}, not by this run {run_token}): another run's "
                  f"labels are never adopted; this run starts from its checkpoint's labels, if any", flush=True)
        # Claim the file: pending files beside it belong to the other run, and a
        # restart of this store must find this run's (empty) snapshot.
        self.reset()

    # ----------------------------------------------------------------- state

    @property
    def snapshot_path(self) -> Path | None:
        """Where every commit writes the snapshot (None: nowhere); pending reports go beside it."""
        return self._snapshot_path

    @snapshot_path.setter
    def snapshot_path(self, path: str | os.PathLike | None) -> None:
        self._snapshot_path = None if path is None else Path(path)
        pending = None if self._snapshot_path is None else pending_dir(self._snapshot_path)
        self._candidates.pending = self._staged.pending = pending

    @property
    def version(self) -> int:
        """Current version: 0 when empty, +1 per commit."""
        return self._history.version

    @property
    def _geometry(self) -> tuple[int, int, tuple[int, int]]:
        return self.num_samples, self.label_slots, self.shape

    # ----------------------------------------------------------------- snapshots (format: labels/snapshot.py)

    def snapshot_bytes(self) -> bytes:
        """The labels, version and statistics as NPZ bytes (no pickle).

        Candidate reports, selections and staged rows are not included: they
        belong to an epoch in progress, not to a checkpoint. The run token is.
        """
        buf = io.BytesIO()
        write_snapshot(buf, self._state())
        return buf.getvalue()

    def _state(self) -> SnapshotState:
        state = self._history.state()
        state.run_token = self.run_token
        return state

    def save_snapshot(self, path: str | os.PathLike) -> None:
        """Write :meth:`snapshot_bytes` to ``path`` atomically (temp file + rename)."""
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            write_snapshot(f, self._state())

    def reset(self) -> None:
        """Back to an empty store (version 0, no pending work), written to ``snapshot_path`` if set.

        A training run that starts without a checkpoint calls it, so that labels
        a failed first attempt published are not carried into the new attempt.
        """
        self._history.reset()
        self._candidates.prune(None)
        self._staged.prune(None)
        if self.snapshot_path is not None:
            self.save_snapshot(self.snapshot_path)

    def load_snapshot(self, path: str | os.PathLike) -> None:
        """Replace this store's labels, version and statistics by a snapshot file.

        Used to restore a checkpoint into a running store (or actor). Pending
        reports, selections and staged rows are dropped, and when ``snapshot_path`` is set the
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
    def from_snapshot_bytes(cls, data: bytes, snapshot_path: str | os.PathLike | None = None) -> DurableLabels:
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
    def from_snapshot_file(cls, path: str | os.PathLike) -> DurableLabels:
        """A new store (without snapshot_path) holding the snapshot in ``path``."""
        return cls.from_snapshot_bytes(Path(path).read_bytes())

    def _after_restore(self) -> None:
        # From here on the history differs from the snapshot's original store;
        # the epoch in progress (reports, answers, their files) is forgotten.
        self._history.lineage = os.urandom(16)
        self._candidates.prune(None)
        self._staged.prune(None)
        if self.snapshot_path is not None:
            self.save_snapshot(self.snapshot_path)
