"""`aide-ray cluster up|down|status`: a local Ray head for `ray job submit`.

A stand-in for a remote cluster on one machine: `up` starts a Ray head whose
dashboard and Jobs API listen on 127.0.0.1 only and whose node address is
127.0.0.1, so that `ray job submit` and drivers with ``RAY_ADDRESS`` can be
tried exactly as against a KubeRay cluster reached through ``kubectl
port-forward``. Ray 2.60 still opens its GCS, raylet and agent gRPC ports on
all interfaces (there is no option to bind them to loopback); on a machine
that others can reach, use ``--auth token`` (or a host firewall).

The head runs as ``ray start --head --block`` in its own session, and its pid
goes into a small state file. `down` sends that one process SIGTERM, which
makes Ray stop the processes of this head only. We do not run ``ray stop``
(except with ``down --all``), because it kills every Ray process on the
machine: other users' heads, test clusters, notebooks.

``RAY_AUTH_MODE`` is always set explicitly for the head: ``disabled`` by
default (a single-user machine), or ``token`` (``--auth token``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from aide_ray._internal.io import atomic_write_text
from aide_ray.exceptions import AideRayError

__all__ = [
    "AUTH_MODES",
    "LOOPBACK",
    "ClusterError",
    "HeadSpec",
    "HeadState",
    "add_arguments",
    "head_status",
    "jobs_api_url",
    "read_state",
    "run",
    "start_head",
    "state_path",
    "stop_head",
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


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _is_our_head(pid: int, port: int) -> bool:
    """True if ``pid`` is still the `ray start --head --block --port=<port>` we started (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc (macOS): trust the state file
    args = [a.decode(errors="replace") for a in cmdline]
    return "start" in args and "--head" in args and f"--port={port}" in args


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


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _jobs_api_answers(dashboard_port: int) -> bool:
    """True once the dashboard serves the Jobs API (an HTTP answer, 401 included under token auth)."""
    try:
        with urllib.request.urlopen(f"{jobs_api_url(dashboard_port)}/api/jobs/", timeout=2):
            return True
    except urllib.error.HTTPError as e:
        return e.code in (401, 403)
    except (urllib.error.URLError, OSError):
        return False


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
    if old is not None and _pid_alive(old.pid) and _is_our_head(old.pid, old.port):
        raise ClusterError(f"a head started by `aide-ray cluster up` is already running on port {spec.port} "
                           f"(pid {old.pid}); stop it with `aide-ray cluster down --port {spec.port}`")
    for option, port in (("--port", spec.port), ("--dashboard-port", spec.dashboard_port),
                         ("--client-port", spec.client_port),
                         ("--dashboard-agent-port", spec.dashboard_agent_port)):
        if _port_in_use(port):
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
    while not _jobs_api_answers(spec.dashboard_port):
        if proc.poll() is not None:
            raise ClusterError(f"`ray start` exited with code {proc.returncode}; last lines of {log_path}:\n"
                               f"{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            _terminate(proc.pid, timeout_s=30.0)
            raise ClusterError(f"the Jobs API at {jobs_api_url(spec.dashboard_port)} did not answer within "
                               f"{timeout_s:g} s; last lines of {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.5)
    state = HeadState(pid=proc.pid, port=spec.port, dashboard_port=spec.dashboard_port, auth=spec.auth,
                      log=str(log_path), temp_dir=str(Path(spec.temp_dir).resolve()) if spec.temp_dir else None)
    atomic_write_text(state_path(spec.port, spec.temp_dir), json.dumps(asdict(state), indent=2) + "\n")
    return state


def _terminate(pid: int, *, timeout_s: float) -> bool:
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
            if not _pid_alive(pid):
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
    if _pid_alive(state.pid) and _is_our_head(state.pid, state.port):
        _terminate(state.pid, timeout_s=timeout_s)
    path.unlink(missing_ok=True)
    return state


def head_status(port: int = DEFAULT_PORT, temp_dir: str | os.PathLike | None = None) -> int:
    """Print the recorded head (if any) and ``ray status`` of ``127.0.0.1:<port>``; return its exit code."""
    state = read_state(port, temp_dir)
    auth = "disabled"
    if state is not None:
        alive = _pid_alive(state.pid) and _is_our_head(state.pid, state.port)
        print(f"head from `aide-ray cluster up`: pid {state.pid} ({'running' if alive else 'not running'}), "
              f"auth {state.auth}, Jobs API {jobs_api_url(state.dashboard_port)}, log {state.log}")
        auth = state.auth
    env = _head_env(os.environ.get("RAY_AUTH_MODE", auth))
    return subprocess.run([_ray_executable(), "status", f"--address={LOOPBACK}:{port}"], env=env).returncode


def _print_started(state: HeadState, spec: HeadSpec) -> None:
    url = jobs_api_url(state.dashboard_port)
    auth_prefix = "RAY_AUTH_MODE=token " if state.auth == "token" else ""
    print(f"Ray head running (pid {state.pid}); dashboard and Jobs API on {LOOPBACK} only; "
          f"RAY_AUTH_MODE={state.auth}")
    print(f"  GCS (drivers):         {LOOPBACK}:{state.port}")
    print(f"  dashboard + Jobs API:  {url}")
    print(f"  Ray Client:            ray://{LOOPBACK}:{spec.client_port}")
    print(f"  log:                   {state.log}")
    if state.auth == "token":
        print(f"  token:                 {_ensure_token(_head_env('token'))} (clients need RAY_AUTH_MODE=token)")
    else:
        print("  note: Ray's GCS/raylet ports listen on all interfaces and auth is off; on a machine others "
              "can reach, use --auth token (docs/security.md)")
    print("Submit a job (the working dir is uploaded without the paths in .rayignore):")
    print(f"  {auth_prefix}RAY_ADDRESS={url} ray job submit --working-dir . -- "
          "python jobs/train_aide.py epochs=2")
    print("Or run a driver against it:")
    print(f"  {auth_prefix}RAY_ADDRESS={LOOPBACK}:{state.port} python jobs/train_aide.py")
    stop = f"aide-ray cluster down --port {state.port}"
    if state.temp_dir:
        stop += f" --temp-dir {shlex.quote(state.temp_dir)}"
    print(f"Stop it:  {stop}")


# --------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, default=DEFAULT_PORT, help="GCS port of the head (default: %(default)s)")
    common.add_argument("--temp-dir", default=None,
                        help="Ray temp/session folder, also holding the state and log files "
                             "(default: Ray's <tmp>/ray); keep it short: Unix socket paths are limited")
    actions = parser.add_subparsers(dest="action")
    actions.required = True
    up = actions.add_parser("up", parents=[common], help="start a head bound to 127.0.0.1")
    up.add_argument("--num-cpus", type=int, default=DEFAULT_NUM_CPUS, help="logical CPUs (default: %(default)s)")
    up.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: detected by Ray)")
    up.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT,
                    help="dashboard and Jobs API port (default: %(default)s)")
    up.add_argument("--client-port", type=int, default=DEFAULT_CLIENT_PORT,
                    help="Ray Client server port (default: %(default)s)")
    up.add_argument("--dashboard-agent-port", type=int, default=DEFAULT_DASHBOARD_AGENT_PORT,
                    help="the head's dashboard agent HTTP port, which runs submitted jobs (default: %(default)s)")
    up.add_argument("--auth", choices=AUTH_MODES, default="disabled",
                    help="RAY_AUTH_MODE of the head: 'disabled' (default, for a single-user machine: the "
                         "Jobs API is on 127.0.0.1 but Ray's gRPC ports listen on all interfaces) or 'token' "
                         "(token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, generated "
                         "if missing); see docs/security.md")
    up.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds to wait for the Jobs API (default: %(default)s)")
    down = actions.add_parser("down", parents=[common], help="stop the head that `up` started")
    down.add_argument("--all", action="store_true",
                      help="run `ray stop` instead: stops EVERY Ray process on this machine")
    down.add_argument("--timeout-s", type=float, default=60.0,
                      help="seconds to wait for a clean stop before killing (default: %(default)s)")
    actions.add_parser("status", parents=[common], help="show the head and `ray status`")


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        spec = HeadSpec(port=args.port, dashboard_port=args.dashboard_port, client_port=args.client_port,
                        dashboard_agent_port=args.dashboard_agent_port, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus, temp_dir=args.temp_dir, auth=args.auth)
        _print_started(start_head(spec, timeout_s=args.timeout_s), spec)
        return 0
    if args.action == "down":
        if args.all:
            return subprocess.run([_ray_executable(), "stop"]).returncode
        state = stop_head(args.port, args.temp_dir, timeout_s=args.timeout_s)
        print(f"stopped the Ray head on port {state.port} (pid {state.pid})")
        return 0
    if args.action == "status":
        return head_status(args.port, args.temp_dir)
    raise ClusterError(f"action must be one of ['up', 'down', 'status'], got {args.action!r}")  # pragma: no cover

