"""How a sweep's trials are scheduled: the ranking metric, early stopping (ASHA or FIFO), resources, concurrency.

Early stopping must never judge a trial before its method has had the epochs it
needs (AIDE: its label-correction warm-up), so the grace period comes from the
methods themselves (:meth:`aide_ray.methods.base.Method.grace_epochs`) applied
to every setting the space can give them. Its own file because these rules
are pure functions of the config and the space, tested without running a trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Mapping

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from aide_ray.config import Config
from aide_ray.distributed.tune.space import Param, plain_value
from aide_ray.engine.run_setup import best_metric_name
from aide_ray.methods.registry import method_class

__all__ = [
    "DRIVER_CPUS",
    "DATA_CPUS_PER_TRIAL",
    "sweep_metric",
    "grace_period",
    "make_scheduler",
    "trial_resources",
    "resources_per_trial",
    "max_concurrent_trials",
]

# The trial function only drives its Train run (the Train workers are actors
# of their own), so it asks for a sliver of a CPU, as Ray's Train-in-Tune guide does.
DRIVER_CPUS = 0.1
# CPUs kept free per concurrent trial for its Ray Data tasks: Train workers
# holding every logical CPU starve the data pipeline and the trial hangs.
DATA_CPUS_PER_TRIAL = 1.0


def sweep_metric(cfg: Config, has_val: bool) -> str:
    """The metric trials are ranked and stopped by: the one that ranks each run's checkpoints."""
    return best_metric_name(cfg, has_val)


def _method_grace(method: str, space: Mapping[str, Param], cfg: Config) -> int:
    """The longest grace period ``method`` asks for under any setting of its swept options.

    The swept keys of the method's section (``<method>.<field>``) take every
    combination of their candidate values (the bounds of a range, every option
    of choice / grid) on top of the base config's options; a key that is not
    swept keeps the base value. Only the bounds of a range are tried, so a
    method's ``grace_epochs`` is assumed monotone in each ranged option.
    """
    cls = method_class(method)
    base = cfg.options_of(method)
    prefix = f"{method}."
    swept = {key[len(prefix):]: param.candidates() for key, param in space.items() if key.startswith(prefix)}
    if not swept:
        return int(cls.grace_epochs(base))
    fields = list(swept)
    # Few keys with two (ranges) or a handful (choice / grid) candidates each: the product stays small.
    return max(int(cls.grace_epochs(dataclasses.replace(base, **{f: plain_value(v) for f, v in zip(fields, values)})))
               for values in itertools.product(*swept.values()))


def grace_period(space: Mapping[str, Param], cfg: Config) -> int:
    """Epochs every trial runs before ASHA may stop it.

    The largest :meth:`~aide_ray.methods.base.Method.grace_epochs` of any
    method the space can pick (``method`` when swept, else the config's), with
    that method's options from the base config and its swept options at each
    of their candidate values. For AIDE that is the largest warm-up a trial can
    have plus one: no trial is cut before it has finished its warm-up and
    trained one epoch on the labels the warm-up left, so early stopping never
    judges a setting before its label correction has had an effect. Methods
    that need no such wait give 1.
    """
    methods = sorted({str(v) for v in space["method"].candidates()}) if "method" in space else [cfg.method]
    return max(_method_grace(method, space, cfg) for method in methods)


def make_scheduler(space: Mapping[str, Param], cfg: Config, metric: str, *,
                   reduction_factor: int = 4) -> tuple[Any, str]:
    """ASHA on ``metric`` with the :func:`grace_period` rule, or FIFO when that grace period leaves nothing to stop.

    Returns:
        (scheduler, one-line description for the sweep's log)
    """
    grace = grace_period(space, cfg)
    if grace >= cfg.epochs:
        return FIFOScheduler(), (f"no early stopping: the grace period ({grace} epochs: the longest any method of "
                                 f"the space needs before it can be judged) is not shorter than epochs ({cfg.epochs})")
    # stop_last_trials=False: a trial that reaches max_t ends on its own, so its Train
    # controller shuts its worker group down (and frees the workers' placement group)
    # instead of being killed by Tune right after its last report.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs, grace_period=grace,
                              reduction_factor=reduction_factor, stop_last_trials=False)
    return scheduler, f"ASHA on {metric}: grace period {grace} epochs, max_t {cfg.epochs}, reduction factor " \
                      f"{reduction_factor}"


def trial_resources(cfg: Config) -> dict[str, float]:
    """What a trial's own process (the Train driver) reserves; its Train workers are separate actors."""
    return {"CPU": DRIVER_CPUS}


def resources_per_trial(cfg: Config) -> dict[str, float]:
    """Logical resources one running trial needs in all: its Train workers, its driver and its Ray Data tasks."""
    need = {"CPU": cfg.workers * cfg.cpus_per_worker + DRIVER_CPUS + DATA_CPUS_PER_TRIAL}
    if cfg.use_gpu:
        need["GPU"] = float(cfg.workers)
    return need


def max_concurrent_trials(cfg: Config, cluster: Mapping[str, float]) -> int:
    """How many trials fit at once in ``cluster`` (``ray.cluster_resources()``); at least 1."""
    need = resources_per_trial(cfg)
    fits = [math.floor(float(cluster["CPU"] if "CPU" in cluster else 0.0) / need["CPU"] + 1e-9)]
    if "GPU" in need:
        fits.append(math.floor(float(cluster["GPU"] if "GPU" in cluster else 0.0) / need["GPU"] + 1e-9))
    return max(1, min(fits))
