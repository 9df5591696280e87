"""Set-up shared by the Ray benchmarks: a local Ray that survives a slow start, and demo shards.

Imported as ``from _common import ...``: the benchmarks run as ``python benchmarks/NAME.py``,
which puts this folder on the path.
"""

from __future__ import annotations

from pathlib import Path

import ray

from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.distributed.runtime import init_ray as start_ray


def init_ray(attempts: int = 3) -> None:
    """Start a local 4-CPU Ray (no dashboard, workers' output not forwarded) with the project's one helper.

    Retried because on an overloaded machine the raylet can miss Ray's fixed 30 s
    registration deadline ("The current node timed out during startup").
    """
    for attempt in range(attempts):
        try:
            start_ray(num_cpus=4, dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
            print(f"Ray start-up timed out (attempt {attempt + 1} of {attempts}); retrying", flush=True)


def prepare_shards(root: Path, cases: int, slices: int, size: int) -> Path:
    """Demo data ingested into ``root/shards`` (reused when already there)."""
    shards = root / "shards"
    if not (shards / "dataset.json").is_file():
        manifest = make_demo_data(root / "raw", cases=cases, slices=slices, size=size, overwrite=True)
        ingest(manifest, shards, Preprocessing(size=size), overwrite=True, progress=False)
    return shards
