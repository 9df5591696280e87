"""aide_ray.distributed.head and head_process: the head's settings, state file and refusals, without starting Ray.

Starting and stopping a real head is covered by tests/cluster/test_job_submit.py (slow).
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from aide_ray.distributed.head import (
    ClusterError,
    HeadSpec,
    HeadState,
    jobs_api_url,
    read_state,
    start_head,
    state_path,
    stop_head,
)
from aide_ray.distributed.head_process import is_head_process, log_tail, pid_alive, port_in_use


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kwargs,message", [
    ({"port": 8265}, r"the head's ports must all differ"),
    ({"client_port": 10091}, r"client_port must be outside Ray's worker port range \[10002, 19999\], got 10091"),
    ({"dashboard_port": 70000}, r"dashboard_port must be in \[1, 65535\], got 70000"),
    ({"num_cpus": 0}, r"num_cpus must be >= 1, got 0"),
    ({"num_gpus": -1}, r"num_gpus must be >= 0, got -1"),
    ({"auth": "password"}, r"auth must be one of \['disabled', 'token'\], got 'password'"),
])
def test_head_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ClusterError, match=message):
        HeadSpec(**kwargs)


def test_defaults_are_rays_own():
    spec = HeadSpec()
    assert (spec.port, spec.dashboard_port, spec.client_port, spec.auth) == (6379, 8265, 10001, "disabled")
    assert jobs_api_url(8265) == "http://127.0.0.1:8265"


def test_up_refuses_a_port_in_use(tmp_path):
    ports = [_free_port() for _ in range(4)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[1]))
        taken.listen()
        spec = HeadSpec(port=ports[0], dashboard_port=ports[1], client_port=ports[2],
                        dashboard_agent_port=ports[3], temp_dir=str(tmp_path))
        with pytest.raises(ClusterError, match=rf"port {ports[1]} on 127.0.0.1 is already in use; "
                                               r"choose another with --dashboard-port"):
            start_head(spec, timeout_s=5)
    assert not state_path(ports[0], tmp_path).exists()


def test_down_without_up_stops_nothing(tmp_path):
    with pytest.raises(ClusterError, match=r"no head started by `aide-ray cluster up` on port 6399: .* does not exist"):
        stop_head(6399, tmp_path)


def test_state_round_trip_and_stale_state(tmp_path):
    # A state file whose pid is not a Ray head (this test process) must not be signalled:
    # down only removes the stale file.
    state = HeadState(pid=os.getpid(), port=6398, dashboard_port=8298, auth="disabled",
                      log=str(tmp_path / "x.log"), temp_dir=str(tmp_path))
    state_path(6398, tmp_path).write_text(json.dumps(state.__dict__))
    assert read_state(6398, tmp_path) == state
    assert stop_head(6398, tmp_path) == state  # we are still alive: nothing was killed
    assert read_state(6398, tmp_path) is None


def test_corrupt_state_names_the_file(tmp_path):
    state_path(6397, tmp_path).write_text("{not json")
    with pytest.raises(ClusterError, match=r"state file .*aide-ray-head-6397.json is unreadable"):
        read_state(6397, tmp_path)


def test_process_helpers(tmp_path):
    port = _free_port()
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert port_in_use("127.0.0.1", port)
    assert pid_alive(os.getpid())
    assert not is_head_process(os.getpid(), 6379)  # pytest is not `ray start --head`
    log = tmp_path / "head.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert log_tail(log, lines=2) == "line 28\nline 29"
    assert log_tail(tmp_path / "missing.log") == "(no log)"
