"""A simulated multi-node Ray cluster for the scaling benchmarks, as the multi-node tests start one.

``ray.cluster_utils.Cluster`` starts one raylet (and object store) per node on this
machine. Like ``tests/integration/multinode_cluster.py`` it runs in a Ray temp folder
of its own (``RAY_TMPDIR``), so it never joins, and is never joined by, another Ray on
the machine (a test session, an experiment's runs): a plain ``ray.init()`` elsewhere
finds the latest cluster through that folder. Imported as ``from _cluster import ...``
(the benchmarks run as ``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Set before Ray starts anything (worker processes inherit them).
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "OMP_NUM_THREADS": "1",
    "RAY_raylet_start_wait_time_s": "120",  # a loaded 2-core machine can miss Ray's 30 s registration deadline
}
for _key, _value in CLUSTER_ENV.items():
    os.environ.setdefault(_key, _value)

MIB = 1024 * 1024


@contextlib.contextmanager
def simulated_cluster(nodes: list[dict[str, Any]]) -> Iterator[Any]:
    """Start a cluster of ``nodes`` (``Cluster.add_node`` arguments; the first is the head), join it
    with the project's one helper (:func:`aide_ray.distributed.runtime.init_ray`), and end both after.

    Yields:
        The ``ray.cluster_utils.Cluster``; ``cluster.list_all_nodes()`` in the order given.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rbc", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
    (tmp / "ray").mkdir()
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    import ray
    from ray.cluster_utils import Cluster

    from aide_ray.distributed.runtime import init_ray

    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **nodes[0]})
        for spec in nodes[1:]:
            cluster.add_node(**spec)
        cluster.wait_for_nodes()
        init_ray(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(tmp, ignore_errors=True)
