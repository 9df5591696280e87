"""The Ray backend: the training loop inside a Ray Train worker.

Each worker of the ``TorchTrainer`` builds a :class:`RayBackend` and runs the
same :func:`~aide_ray.engine.loop.train_loop` as the local backend. What it
supplies: its shard of the Ray Data datasets, ``torch.distributed`` collectives
(gloo on CPU, NCCL on GPU), DDP through ``prepare_model``, the label-store
actor behind plain method calls, the checkpoint to restore, and
``ray.train.report``.

The checkpoint to restore is the newest that verifies of two: the one Ray Train
hands over (the latest of its ``checkpoint_manager_snapshot.json``, which may
be a truncated one on a resume, and is the newest one after a worker restart
within the run) and the one the driver chose and verified for ``--resume``.
Rank 0 decides and tells the others; with neither, the run starts afresh and
rank 0 empties the label store (labels a failed first attempt published must
not carry over).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint
from ray.train.torch import get_device, prepare_model
from torch import nn

from aide_ray.config import Config, from_dict
from aide_ray.distributed.console import quiet_loggers
from aide_ray.distributed.data_pipeline import shuffle_buffer_rows
from aide_ray.engine.backend import Backend, Split
from aide_ray.engine.loop import train_loop
from aide_ray.exceptions import CheckpointError
from aide_ray.runs.checkpoint import verify_checkpoint

__all__ = ["RayBackend", "ActorClient", "train_loop_per_worker", "FAIL_AT_KEY", "RESTORE_KEY"]

FAIL_AT_KEY = "_fail_at"  # test hook: {"epoch", "step", "rank", "marker"}; the worker dies once there
RESTORE_KEY = "restore_from"  # the driver's verified checkpoint of a resume (a path), or None


class ActorClient:
    """Calls on an actor handle as plain blocking method calls: ``client.stats()`` is
    ``ray.get(actor.stats.remote())``, so the loop talks to the actor as to a local store."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._actor, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(method.remote(*args, **kwargs))

        return call


class RayBackend(Backend):
    """One Ray Train worker's view of the run; see the module docstring."""

    def __init__(self, loop_config: dict[str, Any], cfg: Config) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = get_device()
        self.labels = ActorClient(loop_config["label_store"])
        self.has_val = bool(loop_config["has_val"])
        self._shuffle = cfg.data.shuffle
        self._fail_at = loop_config.get(FAIL_AT_KEY)
        self._restore_from = loop_config.get(RESTORE_KEY)
        self._shards = {split: ray.train.get_dataset_shard(split)
                        for split in ("train", "score", "val") if split != "val" or self.has_val}

    def prepare_net(self, net: nn.Module) -> nn.Module:
        return prepare_model(net)

    def batches(self, split: Split, batch_size: int, *, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        if split not in self._shards:
            return iter(())
        train = split == "train"
        # iter_batches (numpy) rather than iter_torch_batches: rows carry strings
        # (sample_id, case_id) and label overlays happen in numpy before tensors are made.
        return self._shards[split].iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=train, prefetch_batches=1,
            local_shuffle_buffer_size=shuffle_buffer_rows(batch_size) if train and self._shuffle else None)

    def announce(self, line: str) -> None:
        # Ray Train patches print() in its workers to log through its logger, which its console handler
        # and Ray's own capture of stdout then show twice; the process's real stdout shows it once.
        print(line, file=sys.__stdout__, flush=True)

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def before_step(self, epoch: int, step: int) -> None:
        fail = self._fail_at
        if fail and (epoch, step, self.rank) == (fail["epoch"], fail["step"], fail["rank"]) \
                and not os.path.exists(fail["marker"]):
            Path(fail["marker"]).write_text(f"killed at epoch {epoch} step {step}\n")
            os._exit(1)

    @contextlib.contextmanager
    def checkpoint_to_restore(self) -> Iterator[Path | None]:
        ray_checkpoint = ray.train.get_checkpoint()
        candidates = []  # (name, source); checkpoint names sort in time order
        if self._restore_from:
            candidates.append((Path(self._restore_from).name, "driver"))
        if ray_checkpoint is not None:
            candidates.append((Path(ray_checkpoint.path).name, "ray"))
        choice = self._choose(candidates, ray_checkpoint) if self.rank == 0 else None
        choice = self.gather(choice)[0]  # every worker restores what rank 0 chose
        if choice is None:
            if self.rank == 0:
                self.labels.reset()  # a fresh start: nothing of an earlier attempt carries over
            yield None
        elif choice == "driver":
            yield Path(self._restore_from)
        else:
            with ray_checkpoint.as_directory() as folder:
                yield Path(folder)

    def _choose(self, candidates: list[tuple[str, str]], ray_checkpoint: Checkpoint | None) -> str | None:
        """Rank 0: "ray", "driver" or None (nothing to restore); raises when none of them verifies.

        Newest first; of one checkpoint named by both, the driver's local path first.
        """
        reasons = []
        for name, source in sorted(candidates, key=lambda c: (c[0], c[1] == "driver"), reverse=True):
            try:
                if source == "driver":
                    verify_checkpoint(self._restore_from)
                else:
                    with ray_checkpoint.as_directory() as folder:
                        verify_checkpoint(folder)
            except CheckpointError as e:
                print(f"skipped {name}: {e}", flush=True)
                reasons.append(f"{name}: {e}")
                continue
            if source == "ray" and self._restore_from and name != Path(self._restore_from).name:
                print(f"Restoring {name}, Ray Train's newest checkpoint of this run", flush=True)
            return source
        if reasons:
            raise CheckpointError(f"no checkpoint to restore verifies, and a run never starts over silently: "
                                  f"{'; '.join(reasons)}")
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker.

    ``loop_config`` keys: ``config`` (Config.to_dict()), ``dataset_info``
    (dataset.json), ``label_store`` (actor handle), ``has_val``,
    ``torch_threads``, ``restore_from`` (the driver's checkpoint of a resume, or
    None); optional ``_fail_at``.
    """
    torch.set_num_threads(int(loop_config["torch_threads"]))
    cfg = from_dict(loop_config["config"], source="train_loop_config")
    quiet_loggers(bool(loop_config.get("verbose", False)))
    backend = RayBackend(loop_config, cfg)
    train_loop(cfg, loop_config["dataset_info"], backend, verbose=backend.rank == 0)
