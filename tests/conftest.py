"""Shared fixtures: one local Ray cluster per test session, and tiny datasets (<= 128 slices, 32 px).

On our 2-core machines, training workers that hold every logical CPU starve
Ray Data's tasks and the run hangs, so the local cluster advertises 4 logical
CPUs (more than the cores): two 1-CPU train workers plus Ray Data tasks fit.
The dashboard is off and Ray's temp files go under a per-run temp dir.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.distributed.runtime import init_ray

# Explicit, so tests do not depend on Ray's default; the cluster binds 127.0.0.1 only.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A loaded 2-core machine can take longer than Ray's default 30 s to register the raylet.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

RAY_TEST_CPUS = 4


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one."""
    import ray

    init_ray(num_cpus=RAY_TEST_CPUS, dashboard=False, log_to_driver=False,
             temp_dir=tempfile.mkdtemp(prefix="aide-ray-"))
    yield ray
    ray.shutdown()


TINY = Preprocessing(target_spacing=None, size=32, normalize="zscore")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """6 cases x 4 slices: 4 train (noisy labels), 1 val, 1 test."""
    return make_demo_data(tmp_path_factory.mktemp("tiny") / "raw", cases=6, slices=4, size=32, seed=3)


@pytest.fixture(scope="session")
def tiny_shards(tiny_manifest, tmp_path_factory) -> Path:
    return ingest(tiny_manifest, tmp_path_factory.mktemp("tiny") / "shards", TINY, progress=False)


@pytest.fixture(scope="session")
def tiny_semi_shards(tiny_manifest, tmp_path_factory) -> Path:
    """The same cases with half of the train cases unlabelled (the `limited` protocol)."""
    limited = corrupt_manifest(tiny_manifest, tmp_path_factory.mktemp("tiny") / "limited", "limited",
                               seed=0, labelled_fraction=0.5)
    return ingest(limited, tmp_path_factory.mktemp("tiny") / "semi_shards", TINY, progress=False)


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 (moto's threaded server, 127.0.0.1 only): its endpoint URL. Skipped without moto (dev extra)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[s3] (the dev extra) runs the local S3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A new, empty bucket on the local S3, as ``s3://NAME``. For the test's duration the environment points
    pyarrow's S3 filesystem, and so every ``s3://`` URI of aide_ray (and of subprocesses), at that server."""
    import pyarrow.fs as pafs

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    name = f"aide-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_server, access_key="testing", secret_key="testing", region="us-east-1",
                      allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
