"""Checkpoint format: what a training checkpoint folder holds, how it is verified and read.

A checkpoint folder (what Ray Train's ``Checkpoint`` points at, or what the
local backend writes into the run folder) holds ``state.pt`` (nets,
optimisers, schedulers, epoch, the config as plain types), ``metrics.json``
(the epoch's metrics row, which ranks checkpoints), ``dataset.json`` (the
ingest record, so that prediction repeats the exact preprocessing),
``label_store.npz`` (the label store's snapshot at that epoch) and
``files.json``, written last: the size and SHA-256 of every other file. A
folder whose files do not match ``files.json`` (a truncated copy, a crash
while writing) is never loaded: :func:`choose_checkpoint` resumes a run from
its newest checkpoint that verifies and says which newer ones it skipped, and
why. ``state.pt`` holds only tensors and plain containers, so it loads with
``torch.load(..., weights_only=True)``: no user-supplied pickle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from aide_ray.config import Config, from_dict
from aide_ray.exceptions import CheckpointError
from aide_ray.methods.registry import create_method
from aide_ray.nn.modules import unwrap
from aide_ray.runs.folder import (BEST_POINTER, CHECKPOINT_PREFIX, DATASET_FILE, FILES_MANIFEST, LABEL_STORE_FILE,
                                  METRICS_FILE, STATE_FILE, checkpoint_dirs)
from aide_ray.runs.net_weights import NetInit, load_matching

__all__ = ["FORMAT", "LoadedCheckpoint", "CheckpointChoice", "save_checkpoint", "seal_checkpoint",
           "verify_checkpoint", "choose_checkpoint", "newest_valid_checkpoint", "load_state", "load_checkpoint",
           "resolve_checkpoint", "init_nets_from", "NetInit"]

FORMAT = "aide_ray/1"
_HASH_CHUNK = 1 << 20


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for inference.

    Attributes:
        config: the run's configuration.
        nets: every network of the method, on CPU, in eval mode.
        eval_nets: names of the nets whose softmax is averaged at inference.
        dataset_info: the ingest record (``dataset.json``), incl. preprocessing.
        epoch: the 0-based epoch the checkpoint was taken after.
        path: the checkpoint folder.
    """

    config: Config
    nets: dict[str, nn.Module]
    eval_nets: tuple[str, ...]
    dataset_info: dict[str, Any]
    epoch: int
    path: Path


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint to resume from: the newest that verifies, and the newer ones skipped.

    Attributes:
        path: the chosen checkpoint folder, None when none verifies (or there is none).
        epoch: the 0-based epoch it was taken after (-1 without one).
        skipped: (folder, reason) of every newer checkpoint that did not verify, newest first.
    """

    path: Path | None
    epoch: int
    skipped: tuple[tuple[Path, str], ...] = ()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    folder: str | Path,
    *,
    config: Config,
    in_channels: int,
    epoch: int,
    nets: Mapping[str, nn.Module],
    eval_nets: tuple[str, ...],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any],
    label_store_snapshot: bytes | None,
    dataset_info: dict[str, Any],
    metrics: Mapping[str, Any] | None = None,
    run_id: str = "",
) -> Path:
    """Write a checkpoint into ``folder`` (created), ``files.json`` last.

    Other files already in ``folder`` (artifacts such as ``metrics.csv``) are
    listed in ``files.json`` too, so write them first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain_metrics = {k: (float(v) if isinstance(v, (int, float, bool)) else str(v)) for k, v in (metrics or {}).items()}
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "run_id": run_id,
        "method": config.method,
        "in_channels": int(in_channels),
        "eval_nets": list(eval_nets),
        "config": config.to_dict(),
        "nets": {name: unwrap(net).state_dict() for name, net in nets.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sch.state_dict() for name, sch in schedulers.items()},
        "metrics": {k: v for k, v in plain_metrics.items() if isinstance(v, float)},
        # The label store's version in label_store.npz (files.json ties the two files together).
        "label_store_version": _snapshot_version(label_store_snapshot),
    }
    torch.save(state, folder / STATE_FILE)
    if label_store_snapshot is not None:
        (folder / LABEL_STORE_FILE).write_bytes(label_store_snapshot)
    (folder / DATASET_FILE).write_text(json.dumps(dataset_info, indent=1, sort_keys=True))
    (folder / METRICS_FILE).write_text(json.dumps(plain_metrics, indent=1))
    seal_checkpoint(folder)
    return folder


def seal_checkpoint(folder: str | Path) -> None:
    """Write ``files.json``: the size and SHA-256 of every other file of the folder (the last write)."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != FILES_MANIFEST}
    (folder / FILES_MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))


def verify_checkpoint(folder: str | Path) -> None:
    """Check every file listed in ``files.json`` against its recorded size and SHA-256.

    Raises:
        CheckpointError: naming the first missing, truncated or changed file,
            or a folder without ``files.json`` or ``state.pt``.
    """
    folder = Path(folder)
    manifest = folder / FILES_MANIFEST
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder} is not an aide_ray checkpoint: {STATE_FILE} is missing")
    if not manifest.is_file():
        raise CheckpointError(f"{folder} is incomplete: {FILES_MANIFEST} is missing (written last, so the "
                              f"checkpoint was never finished)")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest} is not a valid file list: {e}") from e
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {expected['bytes']} were written: truncated or changed")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} does not match the SHA-256 recorded when it was written")


def _snapshot_version(snapshot: bytes | None) -> int:
    if snapshot is None:
        return -1
    with np.load(io.BytesIO(snapshot), allow_pickle=False) as npz:
        return int(npz["version"])


def _epoch_of(folder: Path) -> int:
    """The epoch a verified checkpoint was taken after (``metrics.json``, else ``state.pt``)."""
    try:
        return int(json.loads((folder / METRICS_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(load_state(folder, verify=False)["epoch"])


def choose_checkpoint(candidates: Iterable[str | os.PathLike]) -> CheckpointChoice:
    """The newest of ``candidates`` (local checkpoint folders) that verifies against its ``files.json``.

    Checkpoint folder names sort in time order (``checkpoint_<time>``, as Ray Train
    and the local backend name them), so the newest is tried first; each one that
    fails (truncated, changed, never finished) is skipped with its reason.
    """
    skipped: list[tuple[Path, str]] = []
    for folder in sorted({Path(c) for c in candidates}, key=lambda p: p.name, reverse=True):
        try:
            verify_checkpoint(folder)
            epoch = _epoch_of(folder)
        except CheckpointError as e:
            skipped.append((folder, str(e)))
            continue
        return CheckpointChoice(path=folder, epoch=epoch, skipped=tuple(skipped))
    return CheckpointChoice(path=None, epoch=-1, skipped=tuple(skipped))


def newest_valid_checkpoint(run_dir: str | os.PathLike) -> CheckpointChoice:
    """:func:`choose_checkpoint` among the checkpoint folders of a local run folder."""
    return choose_checkpoint(checkpoint_dirs(run_dir))


def load_state(folder: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint folder, verified and loaded with ``weights_only=True``."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an aide_ray checkpoint: {STATE_FILE} is missing")
    if verify and (folder / FILES_MANIFEST).is_file():
        verify_checkpoint(folder)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} cannot be loaded as an aide_ray checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {state.get('format') if isinstance(state, dict) else None!r}, "
                              f"expected {FORMAT!r}")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its best, else its latest, checkpoint).

    Raises:
        CheckpointError: if ``path`` holds neither.
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    pointer = path / BEST_POINTER
    if pointer.is_file():
        best = Path(pointer.read_text().strip())
        best = best if best.is_absolute() else path / best
        if (best / STATE_FILE).is_file():
            return best
    candidates = sorted(p.parent for p in path.glob(f"{CHECKPOINT_PREFIX}*/{STATE_FILE}"))
    if candidates:
        return candidates[-1]
    raise CheckpointError(f"{path} is neither a checkpoint folder (no {STATE_FILE}) nor a run folder "
                          f"with {CHECKPOINT_PREFIX}* folders")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a checkpoint (or a run folder's best one) for inference."""
    folder = resolve_checkpoint(path)
    state = load_state(folder)
    config = from_dict(state["config"], source=str(folder / STATE_FILE))
    method = create_method(config, int(state["in_channels"]))
    nets = method.build_nets()
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
        net.eval()
    dataset_file = folder / DATASET_FILE
    dataset_info = json.loads(dataset_file.read_text()) if dataset_file.is_file() else {}
    return LoadedCheckpoint(config=config, nets=nets, eval_nets=tuple(method.eval_nets),
                            dataset_info=dataset_info, epoch=int(state["epoch"]), path=folder)


def _first_eval_net(state: Mapping[str, Any]) -> str:
    names = state.get("eval_nets") or []
    if names:
        return str(names[0])
    # Checkpoints written before eval_nets was recorded: mean teacher infers with its teacher.
    return "teacher" if "teacher" in state["nets"] else next(iter(state["nets"]))


def init_nets_from(nets: Mapping[str, nn.Module], sources: Mapping[str, str | Path]) -> list[NetInit]:
    """Load checkpoint weights into fresh ``nets`` (``model.init_from``), in place.

    Args:
        nets: name -> net to initialise.
        sources: name -> checkpoint or run folder for that net. Each net takes
            the checkpoint's net of the same name if it has one, else the
            checkpoint's first inference net: a supervised "net" starts an AIDE twin.

    Every tensor of the net is loaded but auxiliary heads: a plain U-Net's
    checkpoint starts URPC's net (its pyramid heads) and CCT's (its auxiliary
    decoders) with those left at their initialisation, and a URPC or CCT
    checkpoint starts a plain U-Net without its heads; :attr:`NetInit.left_at_init`
    and :attr:`NetInit.ignored` say which.

    Returns:
        What each net took from where, in the order of ``sources``.

    Raises:
        CheckpointError: a path is no checkpoint, or its nets do not fit (another
            width, class count or number of input channels).
    """
    loaded = []
    states: dict[Path, dict[str, Any]] = {}
    for name, path in sources.items():
        folder = resolve_checkpoint(path)
        if folder not in states:
            states[folder] = load_state(folder)
        state = states[folder]
        weights = state["nets"].get(name, state["nets"][_first_eval_net(state)])
        try:
            left, ignored = load_matching(nets[name], weights)
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else "")
            raise CheckpointError(f"model.init_from: the nets of {folder} do not fit this model "
                                  f"(model.base_width, model.num_classes and the input channels must match): "
                                  f"{detail}") from e
        loaded.append(NetInit(net=name, folder=folder, left_at_init=tuple(left), ignored=tuple(ignored)))
    return loaded
