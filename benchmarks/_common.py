"""Set-up shared by the Ray benchmarks: a local Ray that survives a slow start, and demo shards.

Imported as ``from _common import ...``: the benchmarks run as ``python benchmarks/NAME.py``,
which puts this folder on the path.
"""

from __future__ import annotations

from pathlib import Path


def init_ray(env_vars: dict[str, str], attempts: int = 3) -> None:
    """Start a local 4-CPU Ray; retried because on an overloaded machine the raylet can miss
    Ray's fixed 30 s registration deadline ("The current node timed out during startup")."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env_vars})
            return
        except Exception as e:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
            print(f"Ray start-up timed out (attempt {attempt + 1} of {attempts}); retrying", flush=True)


def prepare_shards(root: Path, cases: int, slices: int, size: int) -> Path:
    """Demo data ingested into ``root/shards`` (reused when already there)."""
    from aide_ray.data.demo import make_demo_data
    from aide_ray.data.ingest import ingest
    from aide_ray.data.preprocess import Preprocessing

    shards = root / "shards"
    if not (shards / "dataset.json").is_file():
        manifest = make_demo_data(root / "raw", cases=cases, slices=slices, size=size, overwrite=True)
        ingest(manifest, shards, Preprocessing(size=size), overwrite=True, progress=False)
    return shards
