"""The one place that starts or joins Ray, and that makes sure an embedded Ray ends with its driver.

Training, Tune, prediction, ``data-summary``, the benchmarks and the test
fixture all call :func:`init_ray`, so every embedded Ray gets the same safe
defaults: more logical CPUs than the training workers take (on a 2-core
machine, workers holding every CPU starve Ray Data's tasks and the run hangs),
one torch/OpenMP thread per worker process, the dashboard bound to 127.0.0.1
and token authentication set explicitly (``disabled`` for a loopback-only
embedded Ray; see docs/security.md), and settings that shorten a fit's start on
a small machine (:data:`EMBEDDED_TRAIN_ENV`, :data:`EMBEDDED_SYSTEM_CONFIG`).
With ``RAY_ADDRESS`` set (``ray job submit`` sets it) the running cluster is
joined as it is.

An embedded Ray is this process's: however the driver ends, none of its
processes may stay behind (a killed driver once left Ray's DashboardAgent and
RuntimeEnvAgent running). A normal end, Ctrl-C (KeyboardInterrupt) and a crash
run ``ray.shutdown()`` at exit; SIGTERM is turned into a normal exit so that it
does too. A SIGKILL runs nothing in this process, so :func:`init_ray` also
starts a small watcher (this file run as a script, in its own session): it
records the embedded Ray's processes and all their descendants every
:data:`WATCH_INTERVAL_S` seconds, and when the driver is gone (its pipe closes)
it stops those still running, SIGTERM then SIGKILL, each checked by its start
time so that a reused process id is never hit. On systems without ``/proc``
there is no watcher; ``aide-ray cluster down --all`` (``ray stop``) clears
what a killed driver left.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from aide_ray.distributed.console import QUIET_WORKER_ENV

__all__ = ["init_ray", "embedded_cpus", "started_embedded", "start_watcher", "WORKER_ENV", "EMBEDDED_TRAIN_ENV",
           "EMBEDDED_SYSTEM_CONFIG", "WATCH_INTERVAL_S"]

# Environment of every Ray worker process of an embedded Ray.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"}
# Ray's core worker calls nice(worker_niceness) at start, 15 by default, so that busy workers yield to Ray's own
# processes. Ray starts them in the driver's session (setpgrp, no setsid), so under Linux's autogroup scheduler
# a Train worker at nice 15 gets about 3% of a core beside any busy nice-0 process of that session (the driver,
# another job started from the same shell). An embedded Ray's workers are the user's job: the driver's
# priority, 0, unless RAY_worker_niceness is set (docs/performance.md, "Start-up").
WORKER_NICENESS_ENV = "RAY_worker_niceness"
# Start-up cuts for an embedded Ray only (docs/performance.md, "Cuts made after the worker-group timeline"), from
# the timeline of a 1-worker fit on a loaded 2-core machine (worker-group start, loop set-up and first checkpoint:
# ~29 s). Set in this process's environment before ray.init, with setdefault (a value the user set wins): Ray Train
# v2 copies both into the TrainController's runtime env at fit() (ENV_VARS_TO_PROPAGATE in
# ray/train/v2/_internal/constants.py), and the raylet, hence every worker process, inherits this environment.
EMBEDDED_TRAIN_ENV = {
    # Read by TrainController.__init__ (ray/train/v2/_internal/execution/controller/controller.py): "0" leaves out
    # its PreemptionCallback, whose PreemptionWatcher actor (one more process, spawned while the Train worker sets
    # up, ~1 s of contention) only polls Ray Core for node drains; a single embedded node is never drained.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Not here: a 0.5 s controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s) ended a fit ~1.5 s sooner,
    # but the Ray engine's steady-state slices/s fell with it in side-by-side runs (docs/performance.md, "On real data").
}
# How many worker processes the raylet starts at once. Ray's default is min(cores, logical CPUs)
# (ray/_private/services.py, start_raylet), 2 here: the SynchronizationActor and the PlacementGroupCleaner take
# both slots and the Train worker waited 1.6 s for one, the third split coordinator 2.8 s. A RayConfig key in
# Ray 2.60 (RAY_CONFIG in ray_config_def.h; named in the installed _raylet.so, raylet and gcs_server); when > 0
# it replaces the raylet's --maximum_startup_concurrency. The CPUs are still shared: ~1-2 s expected. Passed as
# _system_config, which Ray only accepts when it starts the node, and which would win over a RAY_<key> the user
# set, so a key whose RAY_<key> is set is left out (see _system_config below).
EMBEDDED_SYSTEM_CONFIG = {"worker_maximum_startup_concurrency": 8}
WATCH_INTERVAL_S = 1.0  # how often the watcher records new descendants (agents start within seconds)
_GRACE_S = 3.0  # after the driver is gone: time Ray's own shutdown gets, then again after SIGTERM

_embedded: dict[str, object] = {"started": False, "watcher": None}


def embedded_cpus(worker_cpus: float) -> int:
    """Logical CPUs of an embedded Ray: the cores, and at least the workers' share plus two for Ray Data."""
    return max(os.cpu_count() or 1, math.ceil(worker_cpus) + 2)


def started_embedded() -> bool:
    """Whether this process started an embedded Ray (which it then also ends)."""
    return bool(_embedded["started"])


def init_ray(*, worker_cpus: float = 0.0, num_cpus: int | None = None, dashboard: bool = True,
             log_to_driver: bool = True, temp_dir: str | None = None, quiet: bool = True,
             address: str | None = None) -> bool:
    """Join the cluster named by ``RAY_ADDRESS``, else start an embedded local Ray; no-op if Ray is up.

    Args:
        worker_cpus: CPUs the training workers will hold (sizes the embedded Ray).
        num_cpus: logical CPUs of the embedded Ray; default :func:`embedded_cpus`.
        dashboard: start the dashboard (127.0.0.1 only). Ray Train's controller
            polls the state API it hosts; without it the driver log fills with retries.
        log_to_driver: forward the workers' output to this process.
        temp_dir: Ray's session folder (tests use a private one).
        quiet: Ray's workers keep the console to the epoch lines and warnings
            (:mod:`aide_ray.distributed.console`); False keeps Ray's own output.
        address: join this running cluster (GCS address) with the workers' environment
            above, e.g. a ``ray.cluster_utils.Cluster`` of the multi-node tests; its owner
            ends it. The sizing and dashboard arguments do not apply.

    Returns:
        True if this call started or joined Ray, False if it was already initialised.
    """
    # Imported here: `aide-ray --help` and the local backend never import Ray.
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    env = {**WORKER_ENV, WORKER_NICENESS_ENV: os.environ.get(WORKER_NICENESS_ENV, "0"),
           **(QUIET_WORKER_ENV if quiet else {})}
    if address is not None:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver)
        return True
    if os.environ.get("RAY_ADDRESS"):
        # A job's own runtime env wins; passing one here could conflict with it.
        ray.init()
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded: nothing listens beyond 127.0.0.1
    for name, value in EMBEDDED_TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    kwargs = {}
    if temp_dir is not None:
        kwargs["_temp_dir"] = temp_dir
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    ray.init(num_cpus=num_cpus or embedded_cpus(worker_cpus), include_dashboard=dashboard,
             runtime_env={"env_vars": env}, log_to_driver=log_to_driver,
             _node_ip_address="127.0.0.1", _system_config=_system_config(), **kwargs)
    _end_with_this_process(_node_pids(ray))
    return True


def _system_config() -> dict[str, object]:
    """:data:`EMBEDDED_SYSTEM_CONFIG` less the keys the user set as ``RAY_<key>`` (those are the raylet's already)."""
    return {key: value for key, value in EMBEDDED_SYSTEM_CONFIG.items() if not os.environ.get(f"RAY_{key}")}


def _node_pids(ray_module) -> list[int]:
    """Process ids of the embedded node (GCS, raylet, dashboard, log monitor, ...); [] if Ray hides them."""
    node = getattr(getattr(ray_module, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    return [int(info.process.pid) for infos in processes.values() for info in infos
            if getattr(getattr(info, "process", None), "pid", None)]


def _shutdown_embedded() -> None:
    import ray  # noqa: PLC0415  (as in init_ray)

    if ray.is_initialized():
        ray.shutdown()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like any exit: atexit shuts the embedded Ray down


def _end_with_this_process(pids: list[int]) -> None:
    """Shut the embedded Ray down at any exit of this process, and start the watcher for a SIGKILL."""
    _embedded["started"] = True
    atexit.register(_shutdown_embedded)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _embedded["watcher"] = start_watcher(pids)


def start_watcher(pids: list[int]) -> subprocess.Popen | None:
    """Start the watcher of ``pids`` and their descendants; it stops them once this process is gone.

    Returns:
        The watcher (None without ``/proc`` or without pids). Its stdin is this
        process's end of the pipe: closing it (this process ending) triggers it.
    """
    if not pids or not Path("/proc/self/stat").exists():
        return None
    watcher = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--watch"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               close_fds=True)
    watcher.stdin.write((" ".join(map(str, pids)) + "\n").encode())
    watcher.stdin.flush()
    return watcher


# --------------------------------------------------------------------------- the watcher (run as a script)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks), from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[19]))  # ppid, starttime
    return table


def _record(known: dict[int, int], roots: set[int]) -> None:
    """Add the live descendants of ``known`` (pid -> start time) and ``roots`` to ``known``."""
    table = _processes()
    for pid in list(roots):
        if pid in table:
            known.setdefault(pid, table[pid][1])
        roots.discard(pid)
    alive = {pid for pid, start in known.items() if table.get(pid, (0, -1))[1] == start}
    added = True
    while added:
        added = False
        for pid, (ppid, start) in table.items():
            if ppid in alive and pid not in alive and pid != os.getpid():
                known[pid], added = start, True
                alive.add(pid)


def _stop(known: dict[int, int]) -> None:
    """SIGTERM, then SIGKILL, every recorded process that is still the same process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        table = _processes()
        running = [pid for pid, start in known.items() if table.get(pid, (0, -1))[1] == start]
        for pid in running:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not running:
            return
        deadline = time.monotonic() + _GRACE_S
        while time.monotonic() < deadline and any(_processes().get(p, (0, -1))[1] == known[p] for p in running):
            time.sleep(0.1)


def _watch() -> None:
    """The watcher's body: read the pids, record descendants until stdin closes, then stop what is left."""
    roots = {int(p) for p in sys.stdin.buffer.readline().split()}
    known: dict[int, int] = {}
    _record(known, roots)
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], WATCH_INTERVAL_S)
        if ready and not sys.stdin.buffer.read1(4096):
            break  # EOF: the driver is gone, however it ended
        _record(known, roots)
    time.sleep(_GRACE_S)  # a normal end has shut Ray down already; a SIGKILL gets Ray's own reaper first
    _stop(known)


if __name__ == "__main__" and sys.argv[1:] == ["--watch"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch()
