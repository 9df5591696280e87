"""One stage of an experiment: an ``aide-ray`` command run as a subprocess, its log and its wall time.

The driver (:mod:`aide_ray.experiments.pipeline`) and the pseudo-label step of
:mod:`aide_ray.experiments.prepare` both run commands this way, from several
threads at once, so the runner and the shared log lock live here, below both.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from aide_ray.experiments.layout import run_name, timing_file

__all__ = ["log", "aide_ray_cmd", "run_stage"]

# The folder that holds the aide_ray package: the repository root in a checkout. Commands run there,
# with it first on PYTHONPATH, so they import this very copy of aide_ray whether or not it is installed.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# Arms run in threads (--parallel); one lock keeps their progress lines whole.
_print_lock = threading.Lock()


def log(msg: str) -> None:
    """Print a time-stamped progress line (thread-safe)."""
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def aide_ray_cmd() -> list[str]:
    """The CLI, as the module of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "aide_ray.cli.main"]


def run_stage(out: Path, stage: str, arm: str, seed: int, cmd: Sequence[str], log_path: Path) -> bool:
    """Run one command, write its output to ``log_path`` and its wall time to ``OUT/timing/``.

    Args:
        out: experiment folder.
        stage: "train", "predict", "evaluate", "figures" or "pseudo".
        arm, seed: whose stage it is (names the timing file).
        cmd: the command.
        log_path: file that receives the command line and its stdout and stderr.
    Returns:
        Whether the command exited with 0.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = str(PACKAGE_PARENT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log(f"{stage} {run_name(arm, seed)}: {shlex.join(cmd)}")
    start = time.time()
    with open(log_path, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=PACKAGE_PARENT)
    seconds = time.time() - start
    timing = timing_file(out, stage, arm, seed)
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps({"arm": arm, "seed": seed, "stage": stage, "rc": rc, "seconds": round(seconds, 1),
                                  "started": start, "command": shlex.join(cmd)}) + "\n")
    log(f"{stage} {run_name(arm, seed)}: exit {rc} after {seconds / 60:.1f} min (log {log_path})")
    return rc == 0
