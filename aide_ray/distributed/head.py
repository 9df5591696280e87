"""The local Ray head behind `aide-ray cluster up|down|status`: starting, finding and stopping it.

A stand-in for a remote cluster on one machine: :func:`start_head` starts a
Ray head whose dashboard and Jobs API listen on 127.0.0.1 only and whose node
address is 127.0.0.1, so that `ray job submit` and drivers with
``RAY_ADDRESS`` can be tried exactly as against a KubeRay cluster reached
through ``kubectl port-forward``. Ray 2.60 still opens its GCS, raylet and
agent gRPC ports on all interfaces (there is no option to bind them to
loopback); on a machine that others can reach, use ``auth="token"`` (or a host
firewall).

The head runs as ``ray start --head --block`` in its own session, and its pid
goes into a small state file. :func:`stop_head` sends that one process
SIGTERM, which makes Ray stop the processes of this head only. We do not run
``ray stop`` (except :func:`stop_all_ray`, for ``down --all``), because it
kills every Ray process on the machine: other users' heads, test clusters,
notebooks.

``RAY_AUTH_MODE`` is always set explicitly for the head: ``disabled`` by
default (a single-user machine), or ``token``. Its own module, apart from the
command line, because it is process management: the head's command, environment,
token and state file, and waiting for its Jobs API (the sockets, pids and
signals underneath are in :mod:`aide_ray.distributed.head_process`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aide_ray._internal.io import atomic_write_text
from aide_ray.distributed.head_process import (
    is_head_process,
    jobs_api_answers,
    log_tail,
    pid_alive,
    port_in_use,
    terminate,
)
from aide_ray.exceptions import AideRayError

__all__ = [
    "AUTH_MODES",
    "LOOPBACK",
    "DEFAULT_PORT",
    "DEFAULT_DASHBOARD_PORT",
    "DEFAULT_CLIENT_PORT",
    "DEFAULT_DASHBOARD_AGENT_PORT",
    "DEFAULT_NUM_CPUS",
    "DEFAULT_TIMEOUT_S",
    "ClusterError",
    "HeadSpec",
    "HeadState",
    "head_status",
    "jobs_api_url",
    "read_state",
    "start_head",
    "state_path",
    "stop_all_ray",
    "stop_head",
    "token_source",
]

LOOPBACK = "127.0.0.1"
AUTH_MODES = ("disabled", "token")
# Ray's own defaults, so that `aide-ray cluster up` with no options behaves like `ray start --head`.
DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
DEFAULT_DASHBOARD_AGENT_PORT = 52365
# `ray start`'s --min/--max-worker-port defaults: its own ports must lie outside.
WORKER_PORTS = (10002, 19999)
# Two 1-CPU train workers plus Ray Data tasks fit (see tests/conftest.py).
DEFAULT_NUM_CPUS = 4
DEFAULT_TIMEOUT_S = 120.0
_STATE_VERSION = 1


class ClusterError(AideRayError, RuntimeError):
    """The local head could not be started, found or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class HeadSpec:
    """What `up` starts: a head with node address 127.0.0.1 and its dashboard/Jobs API on 127.0.0.1.

    Attributes:
        port: GCS port; drivers connect to ``127.0.0.1:<port>``.
        dashboard_port: dashboard and Jobs API (``ray job submit --address http://127.0.0.1:<port>``).
        client_port: Ray Client server (``ray://127.0.0.1:<port>``).
        dashboard_agent_port: HTTP port of the head's dashboard agent, which runs submitted jobs;
            two heads on one machine need different values.
        num_cpus: logical CPUs the head advertises (may exceed the cores; see tests/conftest.py).
        num_gpus: GPUs the head advertises; None lets Ray detect them.
        temp_dir: Ray's temp/session folder, also where the state and log files go;
            None for Ray's default (``<tmp>/ray``).
        auth: ``RAY_AUTH_MODE`` of the head: "disabled" or "token".
    """

    port: int = DEFAULT_PORT
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    client_port: int = DEFAULT_CLIENT_PORT
    dashboard_agent_port: int = DEFAULT_DASHBOARD_AGENT_PORT
    num_cpus: int = DEFAULT_NUM_CPUS
    num_gpus: int | None = None
    temp_dir: str | None = None
    auth: str = "disabled"

    def __post_init__(self) -> None:
        ports = {
            "port": self.port,
            "dashboard_port": self.dashboard_port,
            "client_port": self.client_port,
            "dashboard_agent_port": self.dashboard_agent_port,
        }
        for name, value in ports.items():
            if not 1 <= value <= 65535:
                raise ClusterError(f"{name} must be in [1, 65535], got {value}")
        if len(set(ports.values())) != len(ports):
            raise ClusterError(f"the head's ports must all differ, got {ports}")
        for name, value in ports.items():
            if WORKER_PORTS[0] <= value <= WORKER_PORTS[1]:
                raise ClusterError(f"{name} must be outside Ray's worker port range "
                                   f"[{WORKER_PORTS[0]}, {WORKER_PORTS[1]}], got {value}")
        if self.num_cpus < 1:
            raise ClusterError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ClusterError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.auth not in AUTH_MODES:
            raise ClusterError(f"auth must be one of {list(AUTH_MODES)}, got {self.auth!r}")


@dataclass(frozen=True)
class HeadState:
    """What `up` records for `down` and `status` (JSON in :func:`state_path`)."""

    pid: int
    port: int
    dashboard_port: int
    auth: str
    log: str
    temp_dir: str | None
    version: int = _STATE_VERSION


def _temp_root(temp_dir: str | os.PathLike | None) -> Path:
    # Ray's own default session root is <tmp>/ray; our files sit beside its session folders.
    return Path(temp_dir) if temp_dir else Path(tempfile.gettempdir()) / "ray"


def state_path(port: int, temp_dir: str | os.PathLike | None = None) -> Path:
    """The state file of the head started on ``port`` (one head per GCS port and temp root)."""
    return _temp_root(temp_dir) / f"aide-ray-head-{port}.json"


def jobs_api_url(dashboard_port: int) -> str:
    """Address for ``ray job submit --address`` / ``RAY_ADDRESS`` (HTTP: the Jobs API)."""
    return f"http://{LOOPBACK}:{dashboard_port}"


def read_state(port: int, temp_dir: str | os.PathLike | None = None) -> HeadState | None:
    """The recorded head on ``port``, or None when `up` has not started one (or `down` stopped it)."""
    path = state_path(port, temp_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return HeadState(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise ClusterError(f"state file {path} is unreadable ({e}); delete it and stop the head with `ray stop`") from e


def _ray_executable() -> str:
    # The `ray` next to this interpreter, so the head runs the same Ray (and aide_ray) as the caller.
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError(f"the `ray` command is neither next to {sys.executable} nor on PATH; "
                           "install the package with `pip install -e .` (it depends on ray[default])")
    return found


def _head_env(auth: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = auth
    # A job's entrypoint "python ..." runs with the head's PATH: put this interpreter's
    # folder first so it finds the same environment (torch, aide_ray) as the caller.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # On SIGTERM (`down`) Ray first drains the node for Serve proxies (30 s by default);
    # a local head serves no traffic, so stop at once.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    return env


def _ensure_token(env: dict[str, str]) -> str:
    """Make sure a token exists for ``RAY_AUTH_MODE=token``; return where it comes from (never the token)."""
    if env.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if not path.is_file() or not path.read_text().strip():
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} is missing or empty; write a token there "
                               "or unset it to use ~/.ray/auth_token")
        return str(path)
    default = Path.home() / ".ray" / "auth_token"
    if not default.is_file():
        # Ray's own generator; its stdout is the token itself, so it is swallowed here.
        done = subprocess.run([_ray_executable(), "get-auth-token", "--generate"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not default.is_file():
            raise ClusterError(f"`ray get-auth-token --generate` failed: {done.stderr.strip()}")
        default.chmod(0o600)
    return str(default)


def _start_command(spec: HeadSpec) -> list[str]:
    cmd = [
        _ray_executable(), "start", "--head", "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={spec.port}",
        "--include-dashboard=true",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={spec.dashboard_port}",
        f"--dashboard-agent-listen-port={spec.dashboard_agent_port}",
        f"--ray-client-server-port={spec.client_port}",
        f"--num-cpus={spec.num_cpus}",
        "--disable-usage-stats",
    ]
    if spec.num_gpus is not None:
        cmd.append(f"--num-gpus={spec.num_gpus}")
    if spec.temp_dir:
        cmd.append(f"--temp-dir={Path(spec.temp_dir).resolve()}")
    return cmd


def start_head(spec: HeadSpec, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> HeadState:
    """Start a Ray head on 127.0.0.1 and wait until its Jobs API answers.

    Args:
        spec: ports, resources, temp folder and auth mode.
        timeout_s: how long to wait for the Jobs API before giving up (and stopping the head).
    Returns:
        The recorded state (pid of ``ray start --block``, ports, log file).
    Raises:
        ClusterError: a head from `up` is already running on the port, a port is taken,
            or Ray did not come up (the message ends with the log's last lines).
    """
    old = read_state(spec.port, spec.temp_dir)
    if old is not None and pid_alive(old.pid) and is_head_process(old.pid, old.port):
        raise ClusterError(f"a head started by `aide-ray cluster up` is already running on port {spec.port} "
                           f"(pid {old.pid}); stop it with `aide-ray cluster down --port {spec.port}`")
    for option, port in (("--port", spec.port), ("--dashboard-port", spec.dashboard_port),
                         ("--client-port", spec.client_port),
                         ("--dashboard-agent-port", spec.dashboard_agent_port)):
        if port_in_use(LOOPBACK, port):
            raise ClusterError(f"port {port} on {LOOPBACK} is already in use; choose another with {option}")

    root = _temp_root(spec.temp_dir)
    root.mkdir(parents=True, exist_ok=True)
    env = _head_env(spec.auth)
    if spec.auth == "token":
        _ensure_token(env)
    log_path = root / f"aide-ray-head-{spec.port}.log"
    with open(log_path, "wb") as log:
        # Own session: Ctrl-C in the calling shell does not reach the head, and the
        # process group lets `down` clean up whatever the head leaves behind.
        proc = subprocess.Popen(_start_command(spec), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not jobs_api_answers(jobs_api_url(spec.dashboard_port)):
        if proc.poll() is not None:
            raise ClusterError(f"`ray start` exited with code {proc.returncode}; last lines of {log_path}:\n"
                               f"{log_tail(log_path)}")
        if time.monotonic() > deadline:
            terminate(proc.pid, timeout_s=30.0)
            raise ClusterError(f"the Jobs API at {jobs_api_url(spec.dashboard_port)} did not answer within "
                               f"{timeout_s:g} s; last lines of {log_path}:\n{log_tail(log_path)}")
        time.sleep(0.5)
    state = HeadState(pid=proc.pid, port=spec.port, dashboard_port=spec.dashboard_port, auth=spec.auth,
                      log=str(log_path), temp_dir=str(Path(spec.temp_dir).resolve()) if spec.temp_dir else None)
    atomic_write_text(state_path(spec.port, spec.temp_dir), json.dumps(asdict(state), indent=2) + "\n")
    return state


def stop_head(port: int = DEFAULT_PORT, temp_dir: str | os.PathLike | None = None, *,
              timeout_s: float = 60.0) -> HeadState:
    """Stop the head that `up` started on ``port`` (only that one) and remove its state file.

    Raises:
        ClusterError: no head was started on ``port`` by `up` (nothing is stopped).
    """
    state = read_state(port, temp_dir)
    path = state_path(port, temp_dir)
    if state is None:
        raise ClusterError(f"no head started by `aide-ray cluster up` on port {port}: {path} does not exist "
                           "(pass the same --port/--temp-dir as to `up`; `aide-ray cluster down --all` runs "
                           "`ray stop`, which stops every Ray process on this machine)")
    if pid_alive(state.pid) and is_head_process(state.pid, state.port):
        terminate(state.pid, timeout_s=timeout_s)
    path.unlink(missing_ok=True)
    return state


def head_status(port: int = DEFAULT_PORT, temp_dir: str | os.PathLike | None = None) -> int:
    """Print the recorded head (if any) and ``ray status`` of ``127.0.0.1:<port>``; return its exit code."""
    state = read_state(port, temp_dir)
    auth = "disabled"
    if state is not None:
        alive = pid_alive(state.pid) and is_head_process(state.pid, state.port)
        print(f"head from `aide-ray cluster up`: pid {state.pid} ({'running' if alive else 'not running'}), "
              f"auth {state.auth}, Jobs API {jobs_api_url(state.dashboard_port)}, log {state.log}")
        auth = state.auth
    env = _head_env(os.environ.get("RAY_AUTH_MODE", auth))
    return subprocess.run([_ray_executable(), "status", f"--address={LOOPBACK}:{port}"], env=env).returncode


def stop_all_ray() -> int:
    """Run ``ray stop``: stops EVERY Ray process on this machine (``down --all``); return its exit code."""
    return subprocess.run([_ray_executable(), "stop"]).returncode


def token_source() -> str:
    """Where a token-auth head's token comes from (a file or the environment; generated if missing), never the token."""
    return _ensure_token(_head_env("token"))
