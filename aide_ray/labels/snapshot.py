"""Snapshot and pending-report files of the label store: NPZ layout, reading, writing, durability.

A snapshot holds a store's labels, version and statistics (not its candidate
reports); checkpoints carry one, and a store with a ``snapshot_path`` rewrites
its own after every commit so that a restarted Ray actor reloads it. Candidate
reports and selections of the epoch in progress are kept beside it, one small
NPZ each, in ``<snapshot_path>.pending/``, and so are the corrections staged for
an epoch until it is published. A restart snapshot names the training run that
wrote it (its run token), so that a new run never adopts another run's labels.
Every file is plain NPZ (``np.load(..., allow_pickle=False)`` reads it) and is
written atomically.

This file is its own module because it is the on-disk format: it knows nothing
of how the store computes its state (:class:`SnapshotState` is the contract),
and readers such as the label export need only :func:`read_geometry` and
:func:`read_snapshot` through the store. See docs/label_store.md.
"""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from aide_ray._internal.io import atomic_file
from aide_ray.exceptions import CheckpointError

__all__ = [
    "SNAPSHOT_FORMAT",
    "SnapshotState",
    "write_snapshot",
    "read_geometry",
    "read_snapshot",
    "read_run_token",
    "pending_dir",
    "write_pending",
    "remove_pending",
    "read_pending",
    "read_staged",
    "Reports",
    "Selections",
    "Staged",
]

#: Version of the snapshot layout written by :func:`write_snapshot`.
SNAPSHOT_FORMAT = 1

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
_PENDING_RE = re.compile(r"^(report|select|stage)-e(\d+)-s(\d+)(?:-[0-9a-f]+)?\.npz$")
PENDING_KINDS = ("report", "select", "stage")

# (epoch, slot) -> {report digest: (sample_index (n,) int64, scores (n,) float32)}
Reports = dict[tuple[int, int], dict[bytes, tuple[np.ndarray, np.ndarray]]]
# (epoch, slot) -> (k, selection (m,) int64)
Selections = dict[tuple[int, int], tuple[int, np.ndarray]]
# epoch -> {stage digest: (slot, sample_index (n,) int64, n entries (bytes, or None: back to the source))}
Staged = dict[int, dict[bytes, tuple[int, np.ndarray, list]]]


@dataclasses.dataclass
class SnapshotState:
    """What a snapshot holds: a store's labels, version and statistics.

    Attributes:
        num_samples, label_slots, shape: N, S and (H, W) of the store.
        version: the store's version.
        entry_slot: (n,) int64, the slot of each stored entry.
        entry_index: (n,) int64, the sample of each stored entry.
        entries: n entries (``bytes`` from the codec), in the order above.
        last_changed: (S, N) int64, the version of each label's last change.
        changed_epoch: (S, N) int64, the epoch of each label's last change (-1: never).
        epoch_changed: {epoch: (S,) int64 labels changed in that epoch}.
        commit_versions: {16-byte commit digest: version that commit produced}.
        lineage: 16 bytes naming the store's history.
        run_token: the training run that wrote the snapshot ("" when unknown).
    """

    num_samples: int
    label_slots: int
    shape: tuple[int, int]
    version: int
    entry_slot: np.ndarray
    entry_index: np.ndarray
    entries: list[bytes]
    last_changed: np.ndarray
    changed_epoch: np.ndarray
    epoch_changed: dict[int, np.ndarray]
    commit_versions: dict[bytes, int]
    lineage: bytes
    run_token: str = ""


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


def write_snapshot(file: BinaryIO, state: SnapshotState) -> None:
    """Write ``state`` to an open binary file as a snapshot NPZ (format :data:`SNAPSHOT_FORMAT`)."""
    lengths = np.fromiter(map(len, state.entries), np.int64, len(state.entries))
    epochs = np.array(sorted(state.epoch_changed), dtype=np.int64)
    changed = np.stack([state.epoch_changed[e] for e in epochs.tolist()]) if epochs.size else None
    keys = list(state.commit_versions)
    arrays = {
        "format": np.int64(SNAPSHOT_FORMAT),
        "version": np.int64(state.version),
        "num_samples": np.int64(state.num_samples),
        "label_slots": np.int64(state.label_slots),
        "shape": np.array(state.shape, dtype=np.int64),
        "entry_slot": state.entry_slot.astype(np.int8),
        "entry_index": _narrow(state.entry_index),
        "entry_length": _narrow(lengths),
        "entry_data": b"".join(state.entries),
        "last_changed": _narrow(state.last_changed),
        "changed_epoch": _narrow(state.changed_epoch),
        "stat_epochs": epochs,
        "stat_changed": np.zeros((0, state.label_slots), np.int64) if changed is None else changed,
        "commit_keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16),
        "commit_versions": np.array([state.commit_versions[k] for k in keys], dtype=np.int64),
        "lineage": np.frombuffer(state.lineage, dtype=np.uint8),
        "run_token": np.array(state.run_token),
    }
    _write_npz(file, arrays)


def read_geometry(file: Any, where: str) -> tuple[int, int, tuple[int, int]]:
    """(num_samples, label_slots, (H, W)) of a snapshot (a path or a binary file).

    Raises:
        CheckpointError: naming ``where``, if ``file`` is not a snapshot.
    """
    try:
        with np.load(file, allow_pickle=False) as npz:
            return int(npz["num_samples"]), int(npz["label_slots"]), tuple(int(v) for v in npz["shape"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{where} is not a label-store snapshot: {e}") from e


def read_snapshot(file: Any, where: str, geometry: tuple[int, int, tuple[int, int]]) -> SnapshotState:
    """Read a snapshot (a path or a binary file) made for ``geometry``.

    Args:
        file: a path or an open binary file.
        where: how to name the file in errors.
        geometry: the (num_samples, label_slots, (H, W)) the snapshot must have.

    Returns:
        The snapshot's state; int64 index arrays whatever the file's widths.

    Raises:
        CheckpointError: if the file is unreadable, of another format, made for
            another geometry, or its entry lengths do not match its entry bytes.
    """
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [k for k in _SNAPSHOT_KEYS if f"{k}.npy" not in npz.zip.namelist()]
            if missing:
                raise CheckpointError(f"{where} is not a label-store snapshot: missing {missing}")
            arrays = {k: npz[k] for k in _SNAPSHOT_KEYS if k != "entry_data"}
            data = _read_npz_bytes(npz, "entry_data")
            # Optional: snapshots written before run tokens existed have none.
            token = str(npz["run_token"]) if "run_token.npy" in npz.zip.namelist() else ""
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{where} is not a readable label-store snapshot: {e}") from e
    if int(arrays["format"]) != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{where} has snapshot format {int(arrays['format'])}, expected {SNAPSHOT_FORMAT}")
    found = (int(arrays["num_samples"]), int(arrays["label_slots"]), tuple(int(v) for v in arrays["shape"]))
    if found != tuple(geometry):
        raise CheckpointError(
            f"{where} was made for (num_samples, label_slots, shape) = {found}, this store has {tuple(geometry)}"
        )
    lengths = arrays["entry_length"].astype(np.int64)
    if int(lengths.sum()) != len(data):
        raise CheckpointError(f"{where}: entry_length sums to {int(lengths.sum())}, entry_data has {len(data)} bytes")
    ends = np.cumsum(lengths).tolist()
    return SnapshotState(
        num_samples=found[0],
        label_slots=found[1],
        shape=found[2],
        version=int(arrays["version"]),
        entry_slot=arrays["entry_slot"].astype(np.int64),
        entry_index=arrays["entry_index"].astype(np.int64),
        entries=[data[a:b] for a, b in zip([0, *ends[:-1]], ends)],
        last_changed=arrays["last_changed"].astype(np.int64),
        changed_epoch=arrays["changed_epoch"].astype(np.int64),
        epoch_changed={int(e): row.astype(np.int64) for e, row in zip(arrays["stat_epochs"], arrays["stat_changed"])},
        commit_versions={bytes(k): int(v) for k, v in zip(arrays["commit_keys"], arrays["commit_versions"].tolist())},
        lineage=arrays["lineage"].tobytes(),
        run_token=token,
    )


def read_run_token(path: Path) -> str | None:
    """The run token of a snapshot file ("" when it has none), or None when the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz["run_token"]) if "run_token.npy" in npz.zip.namelist() else ""
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


# --------------------------------------------------------------------------- pending reports


def pending_dir(snapshot_path: Path) -> Path:
    """The folder of the pending reports and selections that belong with ``snapshot_path``."""
    return snapshot_path.with_name(snapshot_path.name + ".pending")


def write_pending(directory: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write one pending report or selection ``directory/name`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / name) as tmp, open(tmp, "wb") as f:
        _write_npz(f, arrays)


def remove_pending(directory: Path, keep_from_epoch: int | None,
                   kinds: tuple[str, ...] = PENDING_KINDS) -> None:
    """Delete the pending files of ``kinds`` of epochs < ``keep_from_epoch`` (all epochs when None)."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        match = _PENDING_RE.match(path.name)
        if match and match.group(1) in kinds and (keep_from_epoch is None or int(match.group(2)) < keep_from_epoch):
            path.unlink(missing_ok=True)


def read_pending(directory: Path) -> tuple[Reports, Selections]:
    """The pending reports and selections kept in ``directory``.

    Returns:
        (reports, selections): reports[(epoch, slot)][digest] = (sample_index (n,)
        int64, scores (n,) float32); selections[(epoch, slot)] = (k, selection
        (m,) int64). Reports of an answered (epoch, slot) are left out.

    Raises:
        CheckpointError: if a pending file is unreadable.
    """
    reports: Reports = {}
    selections: Selections = {}
    if not directory.is_dir():
        return reports, selections
    for path in sorted(directory.iterdir()):
        match = _PENDING_RE.match(path.name)
        if not match or match.group(1) == "stage":
            continue  # temp files of an interrupted write; staged rows (read_staged)
        try:
            with np.load(path, allow_pickle=False) as npz:
                key = (int(npz["epoch"]), int(npz["slot"]))
                if path.name.startswith("select-"):
                    selections[key] = (int(npz["k"]), npz["selection"].astype(np.int64))
                else:
                    digest = bytes.fromhex(path.stem.rsplit("-", 1)[1])
                    report = (npz["sample_index"].astype(np.int64), npz["scores"].astype(np.float32))
                    reports.setdefault(key, {})[digest] = report
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path} is not a readable pending report: {e}") from e
    for key in selections:
        reports.pop(key, None)
    return reports, selections


def read_staged(directory: Path) -> Staged:
    """The corrections staged in ``directory`` (``stage-e<epoch>-s<slot>-<digest>.npz``), by epoch and digest.

    Raises:
        CheckpointError: if a staged file is unreadable.
    """
    staged: Staged = {}
    if not directory.is_dir():
        return staged
    for path in sorted(directory.glob("stage-*.npz")):
        if not _PENDING_RE.match(path.name):
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                lengths = npz["entry_length"].astype(np.int64)
                data = _read_npz_bytes(npz, "entry_data")
                epoch, slot = int(npz["epoch"]), int(npz["slot"])
                index = npz["sample_index"].astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path} is not a readable staged correction: {e}") from e
        ends = np.cumsum(lengths.clip(0)).tolist()
        packed = [None if n < 0 else data[end - n:end] for n, end in zip(lengths.tolist(), ends)]
        staged.setdefault(epoch, {})[bytes.fromhex(path.stem.rsplit("-", 1)[1])] = (slot, index, packed)
    return staged
