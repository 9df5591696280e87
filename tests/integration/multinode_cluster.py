"""The driver of the multi-node tests (test_multinode.py): a simulated Ray cluster in a process of its own.

Usage::

    python tests/integration/multinode_cluster.py WORKDIR SHARDS INIT_FROM

It starts a ``ray.cluster_utils.Cluster`` on this machine: a head with 2 CPUs (Ray
Data, Ray Train's controller, the coordinators), "train" nodes a and b with 1 CPU
and the custom resource ``train_slot`` each, a "store" node c with no CPU and
``label_store``. It trains AIDE with ``run_training`` on it, elastic
(``cluster.workers_min=1``, ``workers=2``), workers and label store placed by those
resources, run folder and checkpoints under ``WORKDIR/runs`` (a local folder every
node reads: the shared storage). While the run pauses at hook points it changes
the cluster:

  0. epoch 0 waits until the run has two workers (an elastic run starts with what
     Ray reserves for it at that moment, possibly one; it grows at the next check);
  1. epoch 1, rank 1 pauses at its first step; its node is removed (a crash, no
     graceful shutdown): the run goes on with one worker on the train node left,
     from the latest checkpoint (``run.max_failures``);
  2. epoch 2, rank 0 pauses; a train node b2 is added: Ray Train grows the run back
     to two workers, again from the latest checkpoint;
  3. epoch 3, rank 0 pauses; the label store's node c is removed and a store node
     c2 added, then the pause ends: the actor is recreated on c2 from its restart
     snapshot while the run goes on.

It writes ``WORKDIR/result.json``: the run folder, each node's id, every actor Ray
recorded (class, node, state, restarts), the node every Ray Data task ran on (from
the task events the GCS keeps: no dashboard needed) and what was done when. The test
reads it and asserts; this file asserts nothing itself.

Everything runs in this process's own Ray temp folder (``RAY_TMPDIR``), so neither
the test session's Ray nor any other Ray on the machine is touched or joined.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.update({
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "OMP_NUM_THREADS": "1",
    "RAY_raylet_start_wait_time_s": "120",
    # After a node is lost, Ray Train may first size the worker group from the cluster view of Ray's
    # AutoscalingCoordinator, which is refreshed every 20 s; a group that cannot be placed is given up
    # after this many seconds (default 60) and started again with the fresh view.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
    # A crashed node is declared dead after 5 missed health checks, 1 s apart here (Ray's default: 3 s).
    "RAY_health_check_period_ms": "1000",
})
RAY_TMP = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
os.environ["RAY_TMPDIR"] = str(RAY_TMP)  # Cluster records its address here, not in /tmp/ray
(RAY_TMP / "ray").mkdir()

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from aide_ray.config import load_config  # noqa: E402
from aide_ray.distributed.runtime import init_ray  # noqa: E402
from aide_ray.distributed.trainer import run_training  # noqa: E402

MARKER_WAIT_S = 400  # the longest a step of the choreography waits for the run to reach a pause
TRAIN = {"num_cpus": 1, "resources": {"train_slot": 1}}
STORE = {"num_cpus": 0, "resources": {"label_store": 1}}
RATIO = 0.25  # AIDE corrects k = 4 of the 16 noisy slices per net and epoch: corrections in every epoch


def overrides(shards: str, init_from: str, storage: Path) -> list[str]:
    return [
        f"data.shards={shards}", f"run.storage_path={storage}", "run.name=multinode", f"model.init_from={init_from}",
        "epochs=5", "workers=2", "cpus_per_worker=1", "batch_size=4", "model.base_width=4", "optim.lr=0.01",
        "aide.warmup_epochs=0", "aide.update_every=1", f"aide.update_ratio={RATIO}", "aide.num_augmentations=2",
        "cluster.resources_per_worker={train_slot: 1}", "cluster.label_store_resources={label_store: 1}",
        "cluster.workers_min=1", "cluster.resize_interval_s=2", "run.max_failures=2",
        "run.checkpoints_to_keep=10",  # every epoch's label snapshot stays for the test
    ]


class Choreography:
    """What the driver does to the cluster at each pause (main thread; ``fit()`` runs in another)."""

    def __init__(self, cluster: Cluster, nodes: dict, workdir: Path) -> None:
        self.cluster, self.nodes, self.workdir = cluster, nodes, workdir
        self.events: list[dict] = []
        self.error: str | None = None
        self.started = time.monotonic()

    def points(self) -> list[dict]:
        w = self.workdir
        return [
            # An elastic run starts with the workers Ray's coordinator reserves for it at that moment (Ray Data's
            # own requests compete), possibly one: then epoch 0 waits here for the group to grow to two.
            {"epoch": 0, "step": 0, "rank": 0, "pause_s": 150, "below_world_size": 2, "marker": str(w / "pause-0")},
            {"epoch": 1, "step": 0, "rank": 1, "pause_s": 120, "marker": str(w / "pause-1")},
            {"epoch": 2, "step": 0, "rank": 0, "pause_s": 120, "marker": str(w / "pause-2")},
            {"epoch": 3, "step": 0, "rank": 0, "pause_s": 120, "marker": str(w / "pause-3"),
             "release": str(w / "release-3")},
        ]

    def _log(self, what: str, **extra) -> None:
        self.events.append({"t": round(time.monotonic() - self.started, 1), "what": what, **extra})

    def _wait(self, marker: Path) -> str:
        deadline = time.monotonic() + MARKER_WAIT_S
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run never reached {marker.name}")
            time.sleep(0.2)
        return marker.read_text().strip()

    def _remove(self, name: str) -> None:
        self.cluster.remove_node(self.nodes[name], allow_graceful=False)
        self._log("removed", node=name)

    def _add(self, name: str, spec: dict) -> None:
        self.nodes[name] = self.cluster.add_node(**spec)
        self._log("added", node=name)

    def run(self) -> None:
        try:
            node_id = self._wait(self.workdir / "pause-1")
            self._log("pause-1", node_id=node_id)
            self._remove(next(name for name, node in self.nodes.items() if node.node_id == node_id))
            self._log("pause-2", node_id=self._wait(self.workdir / "pause-2"))
            self._add("b2", TRAIN)
            self._log("pause-3", node_id=self._wait(self.workdir / "pause-3"))
            self._remove("c")
            self._add("c2", STORE)
            (self.workdir / "release-3").write_text("go\n")
        except Exception:  # the test reads it from result.json
            self.error = traceback.format_exc()


def actors() -> list[dict]:
    """Every actor the GCS recorded (alive or dead): class, node, state, restarts."""
    return [{"class": a.get("ActorClassName"), "node_id": (a.get("Address") or {}).get("NodeID"),
             "state": a.get("State"), "restarts": a.get("NumRestarts")}
            for a in ray._private.state.actors().values()]


# Ray Data's work: its map tasks (reads, decodes, flips: every MapOperator runs ``_map_task``), the V1 Parquet
# reader's sampling tasks and the V2 reader's footer-reading actors.
DATA_TASKS = ("_map_task", "_fetch_parquet_file_info")
DATA_ACTORS = ("FooterReader.",)


def data_tasks() -> list[dict]:
    """Every Ray Data task attempt the GCS recorded: its function, name and the node it ran on."""
    out = []
    for event in ray._private.state.state._get_all_task_events():
        info = event.task_info
        func = info.func_or_class_name
        if not event.HasField("task_info") or not (func in DATA_TASKS or func.startswith(DATA_ACTORS)):
            continue
        node = event.state_updates.node_id or info.node_id
        if node:
            out.append({"func": func, "name": info.name, "node_id": node.hex()})
    return out


def main(workdir: Path, shards: str, init_from: str) -> None:
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    nodes = {"head": cluster.head_node}
    for name, spec in (("a", TRAIN), ("b", TRAIN), ("c", STORE)):
        nodes[name] = cluster.add_node(**spec)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address, log_to_driver=False)
    result: dict = {"cluster_start_s": round(time.monotonic() - started, 1)}
    choreography = Choreography(cluster, nodes, workdir)
    cfg = load_config(None, overrides(shards, init_from, workdir / "runs"))

    def fit() -> None:
        try:
            result["run_dir"] = str(run_training(cfg, fail_at=choreography.points()).run_dir)
        except Exception:
            result["error"] = traceback.format_exc()

    fit_started = time.monotonic()
    # fit() in a thread: adding a node installs a signal handler, which only the main thread may do.
    trainer = threading.Thread(target=fit)
    trainer.start()
    choreography.run()
    trainer.join()
    result["fit_s"] = round(time.monotonic() - fit_started, 1)
    result.update(nodes={name: node.node_id for name, node in nodes.items()}, actors=actors(),
                  started_with_one_worker=(workdir / "pause-0").exists(),
                  events=choreography.events, choreography_error=choreography.error)
    try:
        result["data_tasks"] = data_tasks()
    except Exception:  # the test reads it from result.json
        result["data_tasks_error"] = traceback.format_exc()
    (workdir / "result.json").write_text(json.dumps(result, indent=1))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    finally:
        shutil.rmtree(RAY_TMP, ignore_errors=True)
