"""The cluster section of the configuration: where a run's Ray processes go, and elastic workers.

A run on a multi-node cluster says here which nodes its Train workers and its
label-store actor may use, through Ray's own custom resources (a node started
with ``--resources '{"train_slot": 1}'`` offers one; a worker or the actor that
asks for it can only run there), and whether it trains with a fixed number of
workers or elastically between ``workers_min`` and ``workers`` (Ray Train v2's
``ScalingConfig(num_workers=(min, max))``): a run on preemptible nodes then
shrinks when nodes go and grows again when they come back, restarting from
its latest checkpoint each time (docs/deploy.md).

Kept apart from :mod:`aide_ray.distributed.trainer`, which builds Ray's configs
from it, so that reading and validating a config never imports Ray; this module
imports nothing but the options base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aide_ray.options import Section, fail

__all__ = ["ClusterConfig", "RESERVED_RESOURCES"]

# Resources with keys of their own (cpus_per_worker, use_gpu) or that Ray takes only as arguments.
RESERVED_RESOURCES = ("CPU", "GPU", "TPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class ClusterConfig(Section):
    """Placement of the Train workers and the label store; fixed or elastic worker count."""

    _prefix: ClassVar[str] = "cluster"
    # Elastic training: 0 (default) trains with exactly `workers` workers; 1 <= workers_min < workers lets
    # Ray Train start and continue with any number of workers in [workers_min, workers] that fit the cluster.
    workers_min: int = 0
    # Elastic training: how often (seconds) Ray Train checks a healthy run for room to grow (Ray's default: 60).
    resize_interval_s: float = 60.0
    # Custom resources every Train worker needs besides cpus_per_worker / use_gpu, e.g. {train_slot: 1}.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    # Custom resources the label-store actor needs, e.g. {label_store: 1}; empty: any node.
    label_store_resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._in_range("workers_min", 0, None)
        self._in_range("resize_interval_s", 0.0, None)
        for name in ("resources_per_worker", "label_store_resources"):
            object.__setattr__(self, name, _resources(self._key(name), getattr(self, name)))

    def check_workers(self, workers: int) -> None:
        """``workers_min`` against the run's ``workers`` (the elastic maximum)."""
        if self.workers_min > workers:
            fail(self._key("workers_min"), f"0 (a fixed number of workers) or in [1, workers={workers}]",
                 self.workers_min)

    def num_workers(self, workers: int) -> int | tuple[int, int]:
        """Ray Train's ``ScalingConfig(num_workers=...)``: ``workers``, or ``(workers_min, workers)`` when elastic."""
        return (self.workers_min, workers) if self.elastic(workers) else workers

    def elastic(self, workers: int) -> bool:
        """Whether a run of ``workers`` (maximum) workers trains elastically."""
        return 0 < self.workers_min < workers


def _resources(key: str, value: Any) -> dict[str, float]:
    """``value`` as {custom resource: amount > 0}, or a ConfigError naming ``key``."""
    if not isinstance(value, dict):
        fail(key, "a mapping of custom resource names to amounts, e.g. {train_slot: 1}", value)
    out = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            fail(key, "a mapping with resource names as keys", value)
        if name in RESERVED_RESOURCES:
            fail(key, f"custom resources only, not {list(RESERVED_RESOURCES)} (CPUs: cpus_per_worker; GPUs: use_gpu)",
                 value)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) \
                or amount <= 0:
            fail(f"{key}.{name}", "a number > 0", amount)
        out[name] = float(amount)
    return out
