"""`aide-ray cluster` and cluster/local.sh: the command line's refusals, before any Ray process starts.

The head itself (settings, state file, refusals) is tested in tests/cluster/test_head.py;
starting and stopping a real head in tests/cluster/test_job_submit.py (slow).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aide_ray.cli.main import main


def test_down_from_the_command_line_reports_one_line(tmp_path, capsys):
    assert main(["cluster", "down", "--port", "6399", "--temp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aide-ray cluster: error: no head started by `aide-ray cluster up` on port 6399")
    assert len(err.strip().splitlines()) == 1


def test_cluster_requires_an_action(capsys):
    with pytest.raises(SystemExit):
        main(["cluster"])
    assert "{up,down,status}" in capsys.readouterr().err


def test_local_sh_is_a_thin_wrapper(tmp_path):
    """cluster/local.sh forwards to `aide-ray cluster` (one implementation) and rejects unknown actions."""
    script = Path(__file__).resolve().parents[2] / "cluster" / "local.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    done = subprocess.run([str(script), "down", "--port", "6396", "--temp-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "no head started by `aide-ray cluster up` on port 6396" in done.stderr
    bad = subprocess.run([str(script), "restart"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr
