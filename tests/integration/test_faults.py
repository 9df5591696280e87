"""Fault tests: what a killed store, a truncated checkpoint, a killed driver or a reused run folder leaves.

The Ray tests run on the session's local cluster with the tiny data of tests/conftest.py and are
few (three ``TorchTrainer.fit()`` calls in all: ~20 s of fixed overhead each); the rest fail before
any Ray work, or watch plain processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aide_ray.config import load_config
from aide_ray.data.shards import load_dataset_info
from aide_ray.distributed.trainer import run_training
from aide_ray.exceptions import ConfigError
from aide_ray.labels import LabelStore
from aide_ray.methods.correction import correction_count
from aide_ray.runs.folder import LABEL_STORE_FILE, LABEL_STORE_LATEST, STATE_FILE, checkpoint_dirs

RATIO = 0.5


def _config(shards, storage, name, *extra):
    return load_config(None, [
        f"data.shards={shards}", f"run.storage_path={storage}", f"run.name={name}",
        "workers=2", "cpus_per_worker=1", "batch_size=4", "model.base_width=4", "optim.lr=0.01",
        "aide.warmup_epochs=0", "aide.update_every=1", f"aide.update_ratio={RATIO}", "aide.num_augmentations=2",
        *extra,
    ])


def _plant_stale_snapshot(run_dir: Path, num_samples: int, shape) -> None:
    """What a driver killed before its first checkpoint leaves: another run's snapshot with corrections."""
    stale = LabelStore(num_samples, 2, shape, snapshot_path=run_dir / LABEL_STORE_LATEST, run_token="killed-run")
    source = np.zeros((num_samples, *shape), np.uint8)
    stale.commit(0, 0, np.arange(num_samples), 1 - source, source)
    stale.report_candidates(0, 0, np.arange(5), np.linspace(0, 1, 5, dtype=np.float32))


@pytest.mark.ray
@pytest.mark.slow
def test_a_store_killed_while_publishing_applies_every_epoch_whole(ray_cluster, tiny_shards, tmp_path):
    """The label-store actor dies inside publish (labels applied in memory, not yet written); the
    restarted actor publishes the epoch again from what was staged: every epoch applies each net's
    k corrections (fewer only where a prediction is empty) as one version, never part of them. A
    snapshot another run left in the folder is not adopted."""
    info = load_dataset_info(tiny_shards)
    run_dir = tmp_path / "store-kill"
    _plant_stale_snapshot(run_dir, int(info["num_samples"]), tuple(info["shape"][1:]))
    marker = tmp_path / "store-killed"
    cfg = _config(tiny_shards, tmp_path, "store-kill", "epochs=3")
    outcome = run_training(cfg, store_fail_at={"epoch": 1, "marker": str(marker)})
    history = outcome.history
    assert marker.is_file()
    assert list(history["epoch"]) == [0, 1, 2]
    assert history.loc[0, "label_version_at_start"] == 0 and history.loc[0, "rows_with_corrected_label"] == 0

    eligible = int(info["counts"]["split_label_kind"]["train"]["lq"])
    k = correction_count(RATIO, eligible)
    store = LabelStore.from_snapshot_file(Path(outcome.latest_checkpoint) / LABEL_STORE_FILE)
    per_epoch = store.stats()["changed_per_epoch"]
    corrected_before = {"net1": 0, "net2": 0}
    published = 0
    for epoch, row in history.iterrows():
        # One version per epoch that corrects: the killed publication was applied once, by its retry.
        assert row["label_version_at_start"] == published, epoch
        for net in ("net1", "net2"):
            # AIDE's k per net, capped so that at most every eligible label is corrected.
            assert row[f"selected_{net}"] == min(k, eligible - corrected_before[net]), (epoch, net)
            assert row[f"relabelled_{net}"] <= row[f"selected_{net}"]
            corrected_before[net] = row[f"corrected_{net}"]
        # All of the epoch's corrections, or none, reached the store.
        assert per_epoch.get(epoch, [0, 0]) == [row["relabelled_net1"], row["relabelled_net2"]], epoch
        published += int(max(row["selected_net1"], row["selected_net2"]) > 0)
    assert store.version == published


@pytest.mark.ray
@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_that_ray_would_hand_over(ray_cluster, tiny_shards, tmp_path, capsys):
    """Ray Train's own record names the newest checkpoint, truncated here; the run resumes from the
    newest one that verifies, says which and why the newer one was skipped."""
    cfg = _config(tiny_shards, tmp_path, "trunc", "epochs=2", "run.checkpoints_to_keep=2")
    first = run_training(cfg)
    older, latest = (Path(p) for p in checkpoint_dirs(first.run_dir))
    state = latest / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ConfigError, match="run.name must name a new run folder"):
        run_training(cfg)  # without --resume Ray would silently continue the folder
    capsys.readouterr()

    # Read before resuming: with checkpoints_to_keep=2 Ray deletes the older checkpoint once the
    # resumed run has saved two newer ones.
    older_version = LabelStore.from_snapshot_file(older / LABEL_STORE_FILE).version
    resumed = run_training(cfg.replace(epochs=3), resume=first.run_dir)
    out = capsys.readouterr().out
    assert f"skipped {latest}: {state} has " in out and "truncated or changed" in out
    assert f"Resuming from {older} (epoch 1 done)" in out
    assert list(resumed.history["epoch"]) == [0, 1, 2]
    # Epoch 1 was trained again from the older checkpoint's labels.
    assert resumed.history.loc[1, "label_version_at_start"] == older_version


def test_a_new_run_into_a_folder_with_checkpoints_fails_before_ray(tiny_shards, tmp_path):
    (tmp_path / "taken" / "checkpoint_2026-01-01_00-00-00.000000").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"run.name must name a new run folder, got 'taken': .* already holds 1 "
                                          r"checkpoint\(s\); continue it with --resume"):
        run_training(_config(tiny_shards, tmp_path, "taken", "epochs=1"))


# --------------------------------------------------------------------------- leftovers of a killed driver


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def _tree(root: int) -> dict[int, int]:
    """pid -> start time of ``root``'s descendants (not root itself)."""
    table = _processes()
    found, frontier = {}, {root}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found.update({pid: table[pid][1] for pid in children})
        frontier = children
    return found


def _wait_gone(pids: dict[int, int], timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        table = _processes()
        left = {pid: start for pid, start in pids.items() if table.get(pid, (0, -1))[1] == start}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _kill_left(pids: dict[int, int]) -> None:
    for pid in _wait_gone(pids, 0):  # only the processes this test started (same start time)
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watcher reads /proc")
def test_the_watcher_stops_what_a_killed_driver_left(tmp_path):
    """A driver's child starts a grandchild in its own session (as the raylet starts Ray's agents),
    after the watcher started; the driver is SIGKILLed; the watcher stops both."""
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from aide_ray.distributed.runtime import start_watcher
        child = subprocess.Popen([sys.executable, "-c", "import subprocess, time; time.sleep(0.5); "
                                  "subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)"])
        start_watcher([child.pid])
        print("ready", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    tree: dict[int, int] = {}
    try:
        assert driver.stdout.readline().strip() == "ready"
        time.sleep(2.5)  # the grandchild starts, the watcher records it
        tree = _tree(driver.pid)
        assert any(p != driver.pid for p in tree) and len(tree) >= 2, tree
        driver.kill()
        driver.wait()
        assert _wait_gone(tree, 20) == {}
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_left(tree)


@pytest.fixture
def short_tmp():
    """Ray's temp dir holds AF_UNIX sockets (at most 107 bytes of path): pytest's tmp_path under a CI
    checkout's long /tmp/pytest-of-<user>/... names can exceed that, so Ray gets a short one."""
    path = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


_EMBEDDED_DRIVER = textwrap.dedent("""
    import os, sys, time
    os.environ.pop("RAY_ADDRESS", None)
    from aide_ray.distributed.runtime import init_ray
    init_ray(num_cpus=2, dashboard=True, log_to_driver=False, temp_dir=sys.argv[1])
    time.sleep(8)  # Ray's agents start; the watcher records them
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_an_embedded_ray_ends_with_its_driver(short_tmp, how):
    """No process of an embedded Ray (GCS, raylet, dashboard, DashboardAgent, RuntimeEnvAgent, workers)
    outlives its driver, whether it is SIGTERMed (Ray shuts down at exit) or SIGKILLed (the watcher)."""
    driver = subprocess.Popen([sys.executable, "-c", _EMBEDDED_DRIVER, str(short_tmp)], stdout=subprocess.PIPE,
                              text=True)
    tree: dict[int, int] = {}
    try:
        assert driver.stdout.readline().strip() == "ready"
        tree = _tree(driver.pid)
        assert len(tree) >= 3, tree  # at least GCS, raylet and an agent
        os.kill(driver.pid, how)
        driver.wait(timeout=60)
        left = _wait_gone(tree, 30)
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in left if Path(f"/proc/{pid}").exists()}
        assert not left, names
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_left(tree)
