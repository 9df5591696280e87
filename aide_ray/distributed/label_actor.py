"""The label store as a Ray actor: one per job, restartable from its own snapshot.

:class:`~aide_ray.labels.store.LabelStore` is plain Python; in a distributed run
the driver starts it once as a Ray actor so that every worker reports
candidates to, stages corrections in and reads deltas from the same store. This
file is its own module because it is the only part of the label store that
needs Ray: the rest (:mod:`aide_ray.labels`) stays importable and testable without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from aide_ray.labels.store import LabelStore

__all__ = ["create_label_store_actor", "DyingLabelStore"]


class DyingLabelStore(LabelStore):
    """Fault-test hook: the actor process dies once, inside ``publish`` of one epoch.

    It dies after the epoch's corrections are applied in memory and before they
    are written, the worst moment: the restarted actor must publish the whole
    epoch again from what was staged. ``fail_at``: ``{"epoch", "marker"}``; the
    marker file makes it die only once (a restart re-runs ``__init__`` with the
    same arguments).
    """

    def __init__(self, *args: Any, fail_at: dict[str, Any], **kwargs: Any) -> None:
        self._fail_at = fail_at
        super().__init__(*args, **kwargs)

    def _before_publish_is_written(self, epoch: int) -> None:
        marker = Path(self._fail_at["marker"])
        if epoch == int(self._fail_at["epoch"]) and not marker.exists():
            marker.write_text(f"label store killed while publishing epoch {epoch}\n")
            os._exit(1)


def create_label_store_actor(
    num_samples: int,
    label_slots: int,
    shape: tuple[int, int],
    snapshot_path: str | os.PathLike | None,
    name: str | None = None,
    *,
    lifetime: str | None = None,
    run_token: str | None = None,
    fail_at: dict[str, Any] | None = None,
    resources: dict[str, float] | None = None,
) -> Any:
    """Start a :class:`LabelStore` as a Ray actor and return its handle.

    With a ``snapshot_path`` the actor restarts without limit (``max_restarts=-1``)
    and its calls are retried (``max_task_retries=-1``): a restart re-runs
    ``__init__`` with these arguments, which reloads this run's latest snapshot
    and the pending reports and staged rows, and every method is idempotent, so
    a retried call neither loses nor duplicates a label. Without one a restart
    would come back empty, so the actor is then not restarted and a crash
    surfaces as ActorDiedError.

    Args:
        num_samples, label_slots, shape, snapshot_path, run_token: as for :class:`LabelStore`
            (the driver passes a fresh run token per training invocation, so a snapshot
            another run left at ``snapshot_path`` is ignored, with a message).
        name: optional actor name (``ray.get_actor(name)`` finds it); an existing
            actor of that name is returned instead of starting a second one.
        lifetime: Ray actor lifetime (None or "detached").
        fail_at: fault-test hook, see :class:`DyingLabelStore`.
        resources: custom resources the actor needs (``cluster.label_store_resources``): it runs,
            and is restarted after its node is lost, only on a node that offers them.

    Returns:
        A Ray actor handle exposing the :class:`LabelStore` methods.
    """
    restartable = snapshot_path is not None
    options: dict[str, Any] = {
        "max_restarts": -1 if restartable else 0,
        "max_task_retries": -1 if restartable else 0,
        "num_cpus": 0,
        "lifetime": lifetime,
    }
    if resources:
        options["resources"] = dict(resources)
    if name is not None:
        options.update(name=name, get_if_exists=True)
    snapshot = None if snapshot_path is None else str(snapshot_path)
    if fail_at:
        return ray.remote(DyingLabelStore).options(**options).remote(
            num_samples, label_slots, shape, snapshot, run_token, fail_at=fail_at)
    return ray.remote(LabelStore).options(**options).remote(num_samples, label_slots, shape, snapshot, run_token)
