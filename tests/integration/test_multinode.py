"""Multi-node runs on one machine: placement by custom resources, node loss, elastic workers.

One run on a simulated cluster (``multinode_cluster.py`` beside this file; its
docstring says what it does to the cluster and when) serves the three tests, each
checking one claim from the run folder and what Ray recorded: the run costs one
``TorchTrainer.fit()`` on a fresh cluster, with two worker-group restarts, about
3 minutes on an idle 2-core machine, so it runs once for the module.

Why a process of its own: the session fixture ``ray_cluster`` runs an embedded
Ray in this process, and a process joins one Ray at a time. Shutting it down for
this module and starting it again afterwards would hand Ray Train's and Ray Data's
process-wide state (contexts, cached actor handles) to a second ``ray.init`` and
make the suite depend on the order its tests run in. In a subprocess the cluster
cannot touch the session's Ray, whatever ran before or after, and it records its
address in a temp folder of its own (``RAY_TMPDIR``), so it never joins, and is
never joined by, another Ray on the machine (another test session, an experiment).

Both nets start from a small supervised net trained here with the local backend
(seconds, no Ray), so that AIDE's predictions are not empty and labels are
corrected in every epoch (an empty prediction never replaces a label).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from aide_ray.config import load_config
from aide_ray.data.shards import load_dataset_info
from aide_ray.engine.epoch import label_digest
from aide_ray.engine.local import train_local
from aide_ray.labels import LabelCache, LabelStore
from aide_ray.methods.correction import correction_count
from aide_ray.runs.folder import LABEL_STORE_FILE, checkpoint_dirs, checkpoint_metrics

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = Path(__file__).with_name("multinode_cluster.py")
RATIO = 0.25  # aide.update_ratio of the driver's run
TRAIN_NODES = {"a", "b", "b2"}


@pytest.fixture(scope="module")
def run(tiny_shards, tmp_path_factory) -> dict:
    """The driver's result.json, plus ``history`` (metrics.csv by epoch) and ``run_dir``."""
    pretrained = tmp_path_factory.mktemp("pretrained")
    # A supervised net that predicts the foreground: every AIDE net of the run starts from it.
    pre = train_local(load_config(None, [
        f"data.shards={tiny_shards}", f"run.storage_path={pretrained}", "run.name=pre", "method=supervised",
        "workers=1", "batch_size=8", "model.base_width=4", "optim.lr=0.03", "epochs=6", "data.val_split="]))
    workdir = tmp_path_factory.mktemp("multinode")
    proc = subprocess.run([sys.executable, str(DRIVER), str(workdir), str(tiny_shards), str(pre.run_dir)],
                          capture_output=True, text=True, timeout=570)
    output = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, output
    result = json.loads((workdir / "result.json").read_text())
    assert result.get("error") is None and result.get("choreography_error") is None, (result, output)
    print(f"\ncluster {result['cluster_start_s']} s, fit {result['fit_s']} s, events {result['events']}, "
          f"started with one worker: {result['started_with_one_worker']}")
    result["run_dir"] = Path(result["run_dir"])
    result["history"] = pd.read_csv(result["run_dir"] / "metrics.csv").set_index("epoch", drop=False)
    return result


def _actors(result: dict, cls: str) -> list[dict]:
    """The actors of a class, each with ``node``: the driver's name of the node it ran on (last)."""
    names = {node_id: name for name, node_id in result["nodes"].items()}
    return [{**a, "node": names.get(a["node_id"])} for a in result["actors"] if a["class"] == cls]


def _checkpoint_digests(run_dir: Path) -> dict[int, int]:
    """Epoch -> digest of the labels in that epoch's checkpoint."""
    out = {}
    for folder in map(Path, checkpoint_dirs(run_dir)):
        store = LabelStore.from_snapshot_file(folder / LABEL_STORE_FILE)
        cache = LabelCache(store.num_samples, store.label_slots, store.shape)
        cache.apply(store.changes_since(0))
        out[int(checkpoint_metrics(folder)["epoch"])] = label_digest(cache)
    return out


def test_workers_on_different_nodes_read_each_others_corrections_the_next_epoch(run):
    """Workers only on train nodes (``cluster.resources_per_worker={train_slot: 1}``, one slot per node:
    two workers are on two nodes), the label store only on store nodes (``cluster.label_store_resources``);
    in every epoch the workers start with exactly the labels the previous epoch published, including
    what the worker on the other node staged."""
    workers = _actors(run, "RayTrainWorker")
    assert {a["node"] for a in workers} == TRAIN_NODES, workers  # a and b, then the one left, then it and b2
    assert [a["node"] for a in _actors(run, "LabelStore")] == ["c2"]  # c2 is the only store node left

    history, digests = run["history"], _checkpoint_digests(run["run_dir"])
    assert (history["label_digest_mismatch"] == 0).all(), history["label_digest_mismatch"].tolist()
    across = 0
    for epoch in history["epoch"].iloc[1:]:
        assert history.loc[epoch, "label_digest_at_start"] == digests[epoch - 1], epoch
        before = history.loc[epoch - 1]
        if before["workers"] == 2 and history.loc[epoch, "workers"] == 2 and before["relabelled_net1"] > 0:
            # Staged by one worker or both; with two workers on two nodes and their labels equal, one of
            # them reads corrections the other node's worker staged.
            assert before["staging_workers"] >= 1
            assert history.loc[epoch, "label_digest_at_start"] != before["label_digest_at_start"]
            across += 1
    assert across >= 1, history[["workers", "relabelled_net1", "staging_workers"]]


def test_node_loss_resumes_from_the_latest_checkpoint_and_the_store_is_recreated(run):
    """A train node crashes in epoch 1: the run goes on from the latest checkpoint (even one Ray never
    registered: the lost worker's report of it went down with its node), with its labels exactly. The
    store's node crashes in epoch 3: the actor comes back on c2 from its snapshot. No corrected label
    is lost or applied twice."""
    assert [e["what"] for e in run["events"]] == ["pause-1", "removed", "pause-2", "added", "pause-3", "removed",
                                                  "added"]
    assert run["events"][1]["node"] in ("a", "b")
    [store] = _actors(run, "LabelStore")
    assert store["node"] == "c2" and store["restarts"] >= 1  # started on c, the only store node then

    history, run_dir = run["history"], run["run_dir"]
    assert list(history["epoch"]) == [0, 1, 2, 3, 4]
    # No epoch was trained to its end twice: every restart went on from the newest checkpoint...
    assert [int(checkpoint_metrics(c)["epoch"]) for c in checkpoint_dirs(run_dir)] == [0, 1, 2, 3, 4]
    # ...with exactly its labels on every worker (the restarts were before epochs 1 and 2).
    digests = _checkpoint_digests(run_dir)
    for epoch in (1, 2):
        assert history.loc[epoch, "label_digest_at_start"] == digests[epoch - 1], epoch
        assert history.loc[epoch, "label_digest_mismatch"] == 0, epoch

    # The final store holds each epoch's corrections once, one version per correcting epoch.
    final = LabelStore.from_snapshot_file(run_dir / LABEL_STORE_FILE)
    per_epoch = final.stats()["changed_per_epoch"]
    for epoch, row in history.iterrows():
        assert per_epoch.get(epoch, [0, 0]) == [row["relabelled_net1"], row["relabelled_net2"]], epoch
    assert final.version == int((history[["selected_net1", "selected_net2"]].max(axis=1) > 0).sum())
    assert final.stats()["corrected"] == [history["corrected_net1"].iloc[-1], history["corrected_net2"].iloc[-1]]


def test_elastic_workers_follow_the_nodes_and_selection_stays_exact(run, tiny_shards):
    """``cluster.workers_min=1``, ``workers=2``: two workers, one after the node loss, two again once a
    train node joins; AIDE's global lowest-k picks k labels per net in every epoch whatever the world size."""
    history = run["history"]
    assert list(history["workers"]) == [2, 1, 2, 2, 2]
    eligible = int(load_dataset_info(tiny_shards)["counts"]["split_label_kind"]["train"]["lq"])
    k = correction_count(RATIO, eligible)
    corrected_before = {"net1": 0, "net2": 0}
    for epoch, row in history.iterrows():
        for net in ("net1", "net2"):
            assert row[f"selected_{net}"] == min(k, eligible - corrected_before[net]), (epoch, net)
            assert row[f"relabelled_{net}"] <= row[f"selected_{net}"], (epoch, net)
            corrected_before[net] = row[f"corrected_{net}"]


def test_ray_data_tasks_ran_on_more_than_one_node(run):
    """Ray Data schedules its tasks and actors ``SPREAD`` over the nodes with a free CPU, and every node reads
    the shards (one shared folder here): the one-off decode of the datasets into the object store runs before
    the worker group takes the train nodes' only CPU, so it uses the train nodes too (the footer readers and the
    read and decode tasks); the per-epoch tasks (flips) then find free CPUs on the head only."""
    assert run.get("data_tasks_error") is None, run["data_tasks_error"]
    names = {node_id: name for name, node_id in run["nodes"].items()}
    per_node = Counter((names.get(t["node_id"], t["node_id"]), t["func"]) for t in run["data_tasks"])
    assert run["data_tasks"] and len({node for node, _ in per_node}) > 1, per_node
