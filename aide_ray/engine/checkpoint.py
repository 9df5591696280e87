"""Checkpoint format: what a training checkpoint folder holds and how it is read.

A checkpoint folder (what Ray Train's ``Checkpoint`` points at) holds
``state.pt`` (nets, optimisers, schedulers, epoch, the config as plain types),
``label_store.npz`` (the label store's snapshot at that epoch) and
``dataset.json`` (the ingest record, so that prediction can repeat the exact
preprocessing). ``state.pt`` holds only tensors and plain containers, so it
loads with ``torch.load(..., weights_only=True)``: no user-supplied pickle is
ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aide_ray.config import Config, from_dict
from aide_ray.exceptions import CheckpointError

__all__ = [
    "FORMAT",
    "STATE_FILE",
    "LABEL_STORE_FILE",
    "DATASET_FILE",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_state",
    "load_checkpoint",
    "resolve_checkpoint",
    "init_nets_from",
]

FORMAT = "aide_ray/1"
STATE_FILE = "state.pt"
LABEL_STORE_FILE = "label_store.npz"
DATASET_FILE = "dataset.json"
BEST_POINTER = "best_checkpoint.txt"  # written by the engine into the run folder


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


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    # Optimiser state dicts hold only tensors, numbers and containers; schedulers likewise.
    return state


def save_checkpoint(
    folder: str | Path,
    *,
    config: Config,
    in_channels: int,
    epoch: int,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    label_store_snapshot: bytes | None,
    dataset_info: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write a checkpoint into ``folder`` (created; must be empty or absent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "method": config.method,
        "in_channels": int(in_channels),
        "config": config.to_dict(),
        "nets": {name: getattr(net, "module", net).state_dict() for name, net in nets.items()},
        "optimizers": {name: _plain_state(opt.state_dict()) for name, opt in optimizers.items()},
        "schedulers": {name: sch.state_dict() for name, sch in schedulers.items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    torch.save(state, folder / STATE_FILE)
    if label_store_snapshot is not None:
        (folder / LABEL_STORE_FILE).write_bytes(label_store_snapshot)
    (folder / DATASET_FILE).write_text(json.dumps(dataset_info, indent=1, sort_keys=True))
    return folder


def load_state(folder: str | Path) -> dict[str, Any]:
    """The raw ``state.pt`` of a checkpoint folder, loaded with ``weights_only=True``."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an aide_ray checkpoint: {STATE_FILE} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} cannot be loaded as an aide_ray checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {state.get('format') if isinstance(state, dict) else None!r}, "
                              f"expected {FORMAT!r}")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its best checkpoint).

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
    candidates = sorted(p.parent for p in path.glob(f"checkpoint_*/{STATE_FILE}"))
    if candidates:
        return candidates[-1]
    raise CheckpointError(f"{path} is neither a checkpoint folder (no {STATE_FILE}) nor a run folder "
                          f"with checkpoint_* folders")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a checkpoint (or a run folder's best one) for inference."""
    from aide_ray.methods.registry import method_class

    folder = resolve_checkpoint(path)
    state = load_state(folder)
    config = from_dict(state["config"], source=str(folder / STATE_FILE))
    method = method_class(config.method)(config, state["in_channels"])
    nets = method.build_nets()
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
        net.eval()
    dataset_file = folder / DATASET_FILE
    dataset_info = json.loads(dataset_file.read_text()) if dataset_file.is_file() else {}
    return LoadedCheckpoint(config=config, nets=nets, eval_nets=tuple(method.eval_nets),
                            dataset_info=dataset_info, epoch=int(state["epoch"]), path=folder)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint folder (used to pin the best checkpoint of a run)."""
    return Path(shutil.copytree(src, dst, dirs_exist_ok=True))


def init_nets_from(nets: dict[str, nn.Module], path: str | Path) -> Path:
    """Load a checkpoint's weights into fresh ``nets`` (``model.init_from``), in place.

    Each net takes the checkpoint's net of the same name if it has one, else the
    checkpoint's first inference net: a supervised "net" starts both AIDE twins,
    as the reference code starts both from one pretrained network.

    Returns:
        The checkpoint folder used.

    Raises:
        CheckpointError: ``path`` is no checkpoint, or its nets do not fit (another
            width, class count or number of input channels).
    """
    from aide_ray.methods.registry import method_class

    folder = resolve_checkpoint(path)
    state = load_state(folder)
    source = state["nets"]
    first = method_class(state["method"]).eval_nets[0]
    for name, net in nets.items():
        weights = source.get(name, source[first])
        try:
            getattr(net, "module", net).load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"model.init_from: the nets of {folder} do not fit this model "
                                  f"(model.base_width, model.num_classes and the input channels must match): "
                                  f"{str(e).splitlines()[0]}") from e
    return folder
