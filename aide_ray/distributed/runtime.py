"""The one place that starts or joins Ray.

Training, Tune, prediction, ``data-summary``, the benchmarks and the test
fixture all call :func:`init_ray`, so every embedded Ray gets the same safe
defaults: more logical CPUs than the training workers take (on a 2-core
machine, workers holding every CPU starve Ray Data's tasks and the run hangs),
one torch/OpenMP thread per worker process, the dashboard bound to 127.0.0.1
and token authentication set explicitly (``disabled`` for a loopback-only
embedded Ray; see docs/security.md). With ``RAY_ADDRESS`` set (``ray job
submit`` sets it) the running cluster is joined as it is.
"""

from __future__ import annotations

import math
import os

__all__ = ["init_ray", "embedded_cpus", "WORKER_ENV"]

# Environment of every Ray worker process of an embedded Ray.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"}


def embedded_cpus(worker_cpus: float) -> int:
    """Logical CPUs of an embedded Ray: the cores, and at least the workers' share plus two for Ray Data."""
    return max(os.cpu_count() or 1, math.ceil(worker_cpus) + 2)


def init_ray(*, worker_cpus: float = 0.0, num_cpus: int | None = None, dashboard: bool = True,
             log_to_driver: bool = True, temp_dir: str | None = None) -> bool:
    """Join the cluster named by ``RAY_ADDRESS``, else start an embedded local Ray; no-op if Ray is up.

    Args:
        worker_cpus: CPUs the training workers will hold (sizes the embedded Ray).
        num_cpus: logical CPUs of the embedded Ray; default :func:`embedded_cpus`.
        dashboard: start the dashboard (127.0.0.1 only). Ray Train's controller
            polls the state API it hosts; without it the driver log fills with retries.
        log_to_driver: forward the workers' output to this process.
        temp_dir: Ray's session folder (tests use a private one).

    Returns:
        True if this call started or joined Ray, False if it was already initialised.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if os.environ.get("RAY_ADDRESS"):
        # A job's own runtime env wins; passing one here could conflict with it.
        ray.init()
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded: nothing listens beyond 127.0.0.1
    kwargs = {}
    if temp_dir is not None:
        kwargs["_temp_dir"] = temp_dir
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    ray.init(num_cpus=num_cpus or embedded_cpus(worker_cpus), include_dashboard=dashboard,
             runtime_env={"env_vars": dict(WORKER_ENV)}, log_to_driver=log_to_driver,
             _node_ip_address="127.0.0.1", **kwargs)
    return True
