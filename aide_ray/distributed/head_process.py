"""The operating-system side of the local head: sockets, pids, signals, logs, and the Jobs API probe.

Small functions that know nothing about Ray's options or the head's state file:
whether a port is taken, whether a pid is still the head we started, how to
stop a process and its group, the tail of a log, whether an HTTP endpoint
answers. Apart from :mod:`aide_ray.distributed.head` so that module reads as
the head's life cycle (start, find, stop) and stays short.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["port_in_use", "pid_alive", "is_head_process", "terminate", "log_tail", "jobs_api_answers"]


def port_in_use(host: str, port: int) -> bool:
    """True if ``port`` on ``host`` cannot be bound (something listens there already)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_head_process(pid: int, port: int) -> bool:
    """True if ``pid`` is still the `ray start --head --block --port=<port>` we started (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the state file
    args = [a.decode(errors="replace") for a in cmdline]
    return "start" in args and "--head" in args and f"--port={port}" in args


def terminate(pid: int, *, timeout_s: float) -> bool:
    """SIGTERM ``pid`` (Ray then stops this head's processes), SIGKILL its group after ``timeout_s``.

    Returns:
        True if the process had to be killed.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child (start_head's timeout path); harmless otherwise.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            if not pid_alive(pid):
                break
        time.sleep(0.2)
    else:
        _kill_group(pid, signal.SIGKILL)
        return True
    # Workers the raylet spawned can outlive it by a moment; they share the head's process group.
    _kill_group(pid, signal.SIGKILL)
    return False


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def jobs_api_answers(url: str) -> bool:
    """True once the dashboard at ``url`` serves the Jobs API (an HTTP answer, 401 included under token auth)."""
    try:
        with urllib.request.urlopen(f"{url}/api/jobs/", timeout=2):
            return True
    except urllib.error.HTTPError as e:
        return e.code in (401, 403)
    except (urllib.error.URLError, OSError):
        return False
