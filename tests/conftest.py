"""Shared fixtures: one local Ray cluster per test session.

On our 2-core machines, training workers that hold every logical CPU starve
Ray Data's tasks and the run hangs, so the local cluster advertises 4 logical
CPUs (more than the cores): two 1-CPU train workers plus Ray Data tasks fit.
The dashboard is off and Ray's temp files go under a per-run temp dir.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Explicit, so tests do not depend on Ray's default; the cluster binds 127.0.0.1 only.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A loaded 2-core machine can take longer than Ray's default 30 s to register the raylet.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

RAY_TEST_CPUS = 4


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one."""
    import ray

    tmp = tempfile.mkdtemp(prefix="aide-ray-")
    ray.init(
        num_cpus=RAY_TEST_CPUS,
        include_dashboard=False,
        _temp_dir=tmp,
        ignore_reinit_error=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"}},
    )
    yield ray
    ray.shutdown()
