"""Set-up shared by the Ray benchmarks: a local Ray that survives a slow start, demo shards, Shenzhen shards.

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

NOISY_SETTING = "noisy"  # the catalogue setting whose data prepare_shenzhen_shards makes (its "noisy" set)
NOISY_PROTOCOL = "pymic-jsrt"  # the label noise of that setting's recipe (aide_ray/experiments/prepare.py)


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


def prepare_shenzhen_shards(dataset: Path, root: Path, size: int) -> Path:
    """Setting 1's noisy Shenzhen training set ingested at ``size`` px into ``root/shards_noisy_<size>`` (reused).

    The same steps as the experiments' ``shenzhen_noisy`` recipe (its "noisy" set only): the clean
    manifest (70/10/20 by case), pymic-jsrt label noise with the setting's clean fraction, both with
    the experiments' data seed, then ingest at the setting's field of view: its CPU inputs are 128 px
    at spacing 2 (256-px PNGs), so ``size`` px means spacing ``2 * 128 / size``.
    """
    from aide_ray.data.noise import corrupt_manifest
    from aide_ray.data.recipes import shenzhen_manifest
    from aide_ray.experiments.catalogue import Inputs, get_setting
    from aide_ray.experiments.prepare import NOISE_SEED, ingest_once

    setting = get_setting(NOISY_SETTING)
    cpu = setting.inputs["cpu"]
    spacing = None if cpu.spacing is None else tuple(s * cpu.size / size for s in cpu.spacing)
    root.mkdir(parents=True, exist_ok=True)
    clean = root / "clean.csv"
    if not clean.is_file():
        shenzhen_manifest(dataset, clean, split_seed=NOISE_SEED)
    noisy = root / "noisy" / "manifest.csv"
    if not noisy.is_file():
        corrupt_manifest(clean, noisy.parent, NOISY_PROTOCOL, NOISE_SEED, overwrite=True, **setting.recipe_options)
    return ingest_once(noisy, root / f"shards_noisy_{size}", Inputs(size=size, spacing=spacing))
