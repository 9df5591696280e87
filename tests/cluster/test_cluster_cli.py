"""`aide-ray cluster`: argument checks and the refusals that happen before any Ray process starts.

Starting and stopping a real head is covered by tests/cluster/test_job_submit.py
(slow); these tests stay fast and never start Ray.
"""

from __future__ import annotations

import json
import socket

import pytest

from aide_ray.cli.cluster import (
    ClusterError,
    HeadSpec,
    HeadState,
    read_state,
    start_head,
    state_path,
    stop_head,
)
from aide_ray.cli.main import main


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


def test_down_from_the_command_line_reports_one_line(tmp_path, capsys):
    assert main(["cluster", "down", "--port", "6399", "--temp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aide-ray cluster: error: no head started by `aide-ray cluster up` on port 6399")
    assert len(err.strip().splitlines()) == 1


def test_state_round_trip_and_stale_state(tmp_path):
    # A state file whose pid is not a Ray head (this test process) must not be signalled:
    # down only removes the stale file.
    import os

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


def test_cluster_requires_an_action(capsys):
    with pytest.raises(SystemExit):
        main(["cluster"])
    assert "{up,down,status}" in capsys.readouterr().err


def test_local_sh_is_a_thin_wrapper(tmp_path):
    """cluster/local.sh forwards to `aide-ray cluster` (one implementation) and rejects unknown actions."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "cluster" / "local.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    done = subprocess.run([str(script), "down", "--port", "6396", "--temp-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "no head started by `aide-ray cluster up` on port 6396" in done.stderr
    bad = subprocess.run([str(script), "restart"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr
