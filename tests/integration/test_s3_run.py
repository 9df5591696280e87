"""A whole Ray training run whose run folder is on object storage (``run.storage_path=s3://...``), offline.

``aide-ray train`` runs in a subprocess with an embedded Ray of its own (its own
``RAY_TMPDIR``, so it joins no other Ray on the machine) and the local S3 of the
``s3_bucket`` fixture (moto's server in this process; the environment that points
``pyarrow.fs`` at it reaches the driver, the Train worker and the label-store actor).
Ray Train persists every checkpoint to the bucket, the driver finishes the run folder
there, and what it left must be what a local run folder holds. The pieces without Ray
are ``tests/runs/test_s3_storage.py``. One fit and Ray's start-up: about a minute on an
idle 2-core machine, so marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from aide_ray._internal import fs
from aide_ray.runs.checkpoint import load_state, verify_checkpoint
from aide_ray.runs.folder import (BEST_POINTER, CONFIG_FILE, HISTORY_FILE, LABEL_STORE_FILE, SCORES_FILE,
                                  checkpoint_dirs, checkpoint_metrics)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_ray_run_writes_its_run_folder_and_checkpoints_to_s3(s3_bucket, tiny_shards):
    storage = fs.join(s3_bucket, "runs")
    ray_tmp = tempfile.mkdtemp(prefix="rs3", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    os.mkdir(os.path.join(ray_tmp, "ray"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "aide_ray.cli.main", "train", f"data.shards={tiny_shards}",
             f"run.storage_path={storage}", "run.name=s3run", "method=aide", "epochs=2", "workers=1",
             "cpus_per_worker=1", "batch_size=4", "model.base_width=4", "aide.supervised_epochs=0",
             "aide.update_every=1", "aide.num_augmentations=2"],
            env={**os.environ, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True, timeout=570)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, output
    run_dir = f"{storage}/s3run"
    assert f"Run folder: {run_dir}" in proc.stdout, output

    checkpoints = checkpoint_dirs(run_dir)
    assert checkpoints and [checkpoint_metrics(c)["epoch"] for c in checkpoints][-1] == 1
    for name in (CONFIG_FILE, HISTORY_FILE, SCORES_FILE, LABEL_STORE_FILE, BEST_POINTER):
        assert fs.exists(fs.join(run_dir, name)), name
    assert fs.read_text(fs.join(run_dir, BEST_POINTER)).strip() in checkpoints

    from ray.train import Checkpoint

    with Checkpoint(checkpoints[-1]).as_directory() as folder:  # as a restarted worker restores it
        verify_checkpoint(folder)
        assert load_state(folder)["epoch"] == 1
