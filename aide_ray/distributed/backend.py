"""The Ray backend: the training loop inside a Ray Train worker.

Each worker of the ``TorchTrainer`` builds a :class:`RayBackend` and runs the
same :func:`~aide_ray.engine.loop.train_loop` as the local backend. What it
supplies: its shard of the Ray Data datasets, ``torch.distributed`` collectives
(gloo on CPU, NCCL on GPU), DDP through ``prepare_model``, the label-store
actor behind plain method calls, the checkpoint to restore, and
``ray.train.report``.

The checkpoint to restore is the newest that verifies of three: the one Ray
Train hands over (the latest of its ``checkpoint_manager_snapshot.json``, which
may be a truncated one on a resume, and after a worker restart within the run
the newest one Ray registered), the one the driver chose and verified for
``--resume``, and the run folder's newest, which Ray may not have registered
(see :meth:`RayBackend._candidates`). Rank 0 decides and tells the others; with
none, the run starts afresh and rank 0 empties the label store (labels a failed
first attempt published must not carry over).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
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
from aide_ray.distributed.data_pipeline import iter_options
from aide_ray.engine.backend import Backend, Split
from aide_ray.engine.loop import train_loop
from aide_ray.exceptions import CheckpointError
from aide_ray.runs.checkpoint import verify_checkpoint
from aide_ray.runs.folder import checkpoint_dirs

__all__ = ["RayBackend", "ActorClient", "train_loop_per_worker", "FAIL_AT_KEY", "RESTORE_KEY", "RUN_DIR_KEY",
           "STREAMING_KEY"]

# Test hook: one point or a list of points {"epoch", "step", "rank", "marker"} where the worker dies once
# (:meth:`RayBackend.before_step`); a point with "pause_s" pauses there once instead.
FAIL_AT_KEY = "_fail_at"
RESTORE_KEY = "restore_from"  # the driver's verified checkpoint of a resume (a path), or None
RUN_DIR_KEY = "run_dir"  # the run folder (path or URI), whose newest checkpoint a restart may restore
STREAMING_KEY = "streaming"  # the datasets stream from Parquet every epoch (not cached): prefetch more


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
    """One Ray Train worker's view of the run; see the module docstring.

    Args:
        dataset_prefix: the Ray Train datasets of the three passes are ``<prefix>train``,
            ``<prefix>score`` and ``<prefix>val``; a worker group that trains several configs
            in turn, each on its own datasets, gives each its prefix
            (tests/integration/test_every_method_ray.py).
    """

    def __init__(self, loop_config: dict[str, Any], cfg: Config, *, dataset_prefix: str = "") -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = get_device()
        self.labels = ActorClient(loop_config["label_store"])
        self.has_val = bool(loop_config["has_val"])
        self._shuffle = cfg.data.shuffle
        self._streaming = bool(loop_config.get(STREAMING_KEY, False))
        fail_at = loop_config.get(FAIL_AT_KEY) or []
        self._fail_at = [fail_at] if isinstance(fail_at, dict) else list(fail_at)
        self._restore_from = loop_config.get(RESTORE_KEY)
        self._run_dir = loop_config.get(RUN_DIR_KEY)
        self._shards = {split: ray.train.get_dataset_shard(f"{dataset_prefix}{split}")
                        for split in ("train", "score", "val") if split != "val" or self.has_val}

    def prepare_net(self, net: nn.Module) -> nn.Module:
        return prepare_model(net)

    def batches(self, split: Split, batch_size: int, *, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        if split not in self._shards:
            return iter(())
        # iter_batches (numpy) rather than iter_torch_batches: rows carry strings
        # (sample_id, case_id) and label overlays happen in numpy before tensors are made.
        return self._shards[split].iter_batches(**iter_options(batch_size, train=split == "train",
                                                               shuffle=self._shuffle, streaming=self._streaming))

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
        """Fault-test hook: at a point of ``FAIL_AT_KEY`` whose marker file does not exist yet, write it
        and die (``os._exit``), or, for a point with ``pause_s``, write this worker's node id into it and
        wait ``pause_s`` seconds or until the point's ``release`` file exists (a test removes a node meanwhile).
        A point with ``below_world_size`` applies only to a smaller worker group (one an elastic run should grow)."""
        for point in self._fail_at:
            if (epoch, step, self.rank) != (point["epoch"], point["step"], point["rank"]) \
                    or os.path.exists(point["marker"]) or self.world_size >= point.get("below_world_size", 1 << 30):
                continue
            if "pause_s" not in point:
                Path(point["marker"]).write_text(f"killed at epoch {epoch} step {step}\n")
                os._exit(1)
            Path(f"{point['marker']}.tmp").write_text(ray.get_runtime_context().get_node_id())
            os.replace(f"{point['marker']}.tmp", point["marker"])  # a test reads the node id once the file exists
            until = time.monotonic() + float(point["pause_s"])
            while time.monotonic() < until and not os.path.exists(point.get("release") or "\0"):
                time.sleep(0.2)

    @contextlib.contextmanager
    def checkpoint_to_restore(self) -> Iterator[Path | None]:
        candidates = self._candidates()
        choice = self._choose(candidates) if self.rank == 0 else None
        choice = self.gather(choice)[0]  # every worker restores what rank 0 chose: (source, path)
        if choice is None:
            if self.rank == 0:
                self.labels.reset()  # a fresh start: nothing of an earlier attempt carries over
            yield None
            return
        source, location = choice
        checkpoint = ray.train.get_checkpoint() if source == "ray" else Checkpoint(location)
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def _candidates(self) -> list[tuple[str, str, str | None]]:
        """(name, source, location) of what a (re)start may restore; names sort in time order.

        ``driver``: the verified checkpoint of a resume; ``ray``: the newest Ray Train
        registered; ``folder``: the newest checkpoint folder of the run, when it is newer
        than both. Ray registers a checkpoint only once every worker's report of that
        epoch reached its controller, and a report waits in the worker until the controller
        polls it: a worker lost just after an epoch (its node gone at the start of the
        next) takes its report along, and Ray then hands over the checkpoint before, or
        none. The run folder, on storage every worker reads, still holds the newer one,
        sealed, and every checkpoint there belongs to this run (a new run never starts in
        a folder with checkpoints), so it is restored when it verifies.
        """
        out = []
        if self._restore_from:
            out.append((Path(self._restore_from).name, "driver", str(self._restore_from)))
        ray_checkpoint = ray.train.get_checkpoint()
        if ray_checkpoint is not None:
            out.append((Path(ray_checkpoint.path).name, "ray", None))  # every worker has it from Ray
        if self._run_dir and self.rank == 0:
            folders = checkpoint_dirs(self._run_dir)
            if folders and all(Path(folders[-1]).name > name for name, _, _ in out):
                out.append((Path(folders[-1]).name, "folder", folders[-1]))
        return out

    def _choose(self, candidates: list[tuple[str, str, str | None]]) -> tuple[str, str | None] | None:
        """Rank 0: (source, location) of the newest candidate that verifies, or None (nothing to restore);
        raises when none of them verifies. Of one checkpoint named by two, the driver's local path first."""
        reasons = []
        for name, source, location in sorted(candidates, key=lambda c: (c[0], c[1] == "driver"), reverse=True):
            checkpoint = ray.train.get_checkpoint() if source == "ray" else Checkpoint(location)
            try:
                with checkpoint.as_directory() as folder:
                    verify_checkpoint(folder)
            except CheckpointError as e:
                print(f"skipped {name}: {e}", flush=True)
                reasons.append(f"{name}: {e}")
                continue
            if source == "folder":
                print(f"Restoring {name}, the run folder's newest checkpoint (newer than Ray Train's)", flush=True)
            elif source == "ray" and self._restore_from and name != Path(self._restore_from).name:
                print(f"Restoring {name}, Ray Train's newest checkpoint of this run", flush=True)
            return source, location
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
    None), ``run_dir`` (the run folder); optional ``_fail_at``.
    """
    torch.set_num_threads(int(loop_config["torch_threads"]))
    cfg = from_dict(loop_config["config"], source="train_loop_config")
    quiet_loggers(bool(loop_config.get("verbose", False)))
    backend = RayBackend(loop_config, cfg)
    train_loop(cfg, loop_config["dataset_info"], backend, verbose=backend.rank == 0)
