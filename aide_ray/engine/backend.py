"""What the training loop needs from where it runs: the backend contract.

One loop (:mod:`aide_ray.engine.loop`) trains every method; a backend
supplies only what differs between one process and a Ray cluster, as Ray
Train v2's local mode runs the same train function with local stand-ins:

* row batches of the three passes of an epoch: ``train`` (shuffled,
  augmented, incomplete last batch dropped), ``score`` (the labelled training
  rows, unaugmented, for training Dice and label-correction candidates) and
  ``val`` (the validation split);
* collectives across workers (``gather``, ``barrier``); identity in one process;
* the label store (a plain :class:`~aide_ray.labels.LabelStore` in process, an
  actor on Ray) behind one call interface, :class:`LabelStoreClient`;
* the device, how a trained net is wrapped (DDP on Ray), the checkpoint to
  resume from, and where an epoch's metrics and checkpoint are reported.

:mod:`aide_ray.engine.local` and :mod:`aide_ray.distributed.backend` implement it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import numpy as np
import torch
from torch import nn

from aide_ray.labels import LabelDelta

__all__ = ["Backend", "LabelStoreClient", "Split"]

Split = Literal["train", "score", "val"]


class LabelStoreClient(Protocol):
    """The label-store calls the loop makes (see :class:`aide_ray.labels.LabelStore` for their meaning)."""

    def changes_since(self, version: int) -> LabelDelta: ...

    def report_candidates(self, epoch: int, slot: int, sample_index: np.ndarray, scores: np.ndarray) -> None: ...

    def select(self, epoch: int, slot: int, k: int) -> np.ndarray: ...

    def commit_encoded(self, epoch: int, slot: int, sample_index: np.ndarray, entries: list) -> Any: ...

    def stage(self, epoch: int, slot: int, sample_index: np.ndarray, packed: list) -> int: ...

    def publish(self, epoch: int, expected: dict[int, int]) -> int: ...

    def reset(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def snapshot_bytes(self) -> bytes: ...

    def load_snapshot_bytes(self, data: bytes) -> None: ...


class Backend(ABC):
    """Where the loop runs. Attributes set by a subclass: ``rank``, ``world_size``, ``device``,
    ``labels`` (the label store client) and ``has_val`` (whether a ``val`` pass exists)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    labels: LabelStoreClient
    has_val: bool = False

    @abstractmethod
    def prepare_net(self, net: nn.Module) -> nn.Module:
        """A trained net moved to the device (and wrapped for data parallelism where there is any)."""

    @abstractmethod
    def batches(self, split: Split, batch_size: int, *, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """This worker's row batches of one pass over ``split`` (keys of ``decode_batch`` plus flip flags)."""

    def gather(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait for every worker."""

    def before_step(self, epoch: int, step: int) -> None:
        """Called before every training step (Ray's fault-injection test hook lives here)."""

    def announce(self, line: str) -> None:
        """Show one line to the user (rank 0's epoch line); once, whatever captures this process's output."""
        print(line, flush=True)

    @contextlib.contextmanager
    def checkpoint_to_restore(self) -> Iterator[Path | None]:
        """The checkpoint folder to resume from (readable inside the ``with``), or None for a fresh start."""
        yield None

    @abstractmethod
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Hand over one epoch's metrics and (rank 0) its checkpoint folder, which is gone after the call."""
