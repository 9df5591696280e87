"""The start-up settings an embedded Ray gets, and that joining a cluster leaves alone (``ray.init`` is faked)."""

from __future__ import annotations

import os

import pytest
import ray

from aide_ray.distributed import runtime

_NAMES = [*runtime.EMBEDDED_TRAIN_ENV, "RAY_ADDRESS",
          *(f"RAY_{key}" for key in runtime.EMBEDDED_SYSTEM_CONFIG)]


@pytest.fixture
def fake_init(monkeypatch):
    """``ray.init`` recorded instead of run; the variables it may set are restored afterwards."""
    for name in _NAMES:
        monkeypatch.setenv(name, "-")  # so that the teardown removes what init_ray sets
        monkeypatch.delenv(name)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(runtime, "_end_with_this_process", lambda pids: None)
    return calls


def test_embedded_ray_gets_the_start_up_settings(fake_init):
    assert runtime.init_ray(num_cpus=4, dashboard=False)
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ  # Ray's 2 s poll (docs/performance.md)
    assert fake_init[0]["_system_config"] == {"worker_maximum_startup_concurrency": 8}


def test_the_users_values_win(fake_init, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    monkeypatch.setenv("RAY_worker_maximum_startup_concurrency", "2")
    runtime.init_ray(num_cpus=4, dashboard=False)
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    assert fake_init[0]["_system_config"] == {}  # the raylet reads RAY_worker_maximum_startup_concurrency itself


@pytest.mark.parametrize("join", ["address", "RAY_ADDRESS"])
def test_a_joined_cluster_keeps_rays_defaults(fake_init, monkeypatch, join):
    if join == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
        runtime.init_ray()
    else:
        runtime.init_ray(address="127.0.0.1:6379")
    assert "_system_config" not in fake_init[0]
    assert not any(name in os.environ for name in runtime.EMBEDDED_TRAIN_ENV)
