"""Steps that several data recipes of the experiments share: ingest once, count cases, make pseudo-labels.

:mod:`aide_ray.experiments.prepare` (most recipes and the registry) and
:mod:`aide_ray.experiments.domain_shift` (setting 4's recipe) both build on them.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pandas as pd

from aide_ray.data.ingest import ingest
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.eval.evaluate import find_prediction
from aide_ray.experiments.catalogue import Inputs
from aide_ray.experiments.layout import data_dir, log_file, train_dir
from aide_ray.experiments.recipe_types import PrepareContext
from aide_ray.experiments.stages import aide_ray_cmd, log, run_stage
from aide_ray.runs.folder import CONFIG_FILE, DATASET_FILE

__all__ = ["NOISE_SEED", "ingest_once", "case_counts", "PseudoLabels"]

NOISE_SEED = 0  # seed of the case split, the label corruption and the random-rater draw (data, not training)


def ingest_once(manifest: Path, shards: Path, inputs: Inputs) -> Path:
    """Ingest ``manifest`` into ``shards`` unless that folder is complete already."""
    if not (shards / DATASET_FILE).is_file():
        log(f"ingest {manifest} -> {shards} (size {inputs.size}, spacing {inputs.spacing})")
        ingest(manifest, shards, Preprocessing(target_spacing=inputs.spacing, size=inputs.size, normalize="zscore"),
               overwrite=True)
    return shards


def case_counts(manifest: Path) -> str:
    """"train N, val N, test N": the cases of each split of ``manifest``."""
    df = pd.read_csv(manifest)
    return ", ".join(f"{s} {df[df['split'] == s]['case_id'].nunique()}" for s in ("train", "val", "test"))


class PseudoLabels:
    """Per seed: predict the unlabelled train cases with that seed's source run, ingest them as kind lq.

    Both pseudo-label arms of a seed call it, possibly at the same time: a lock per seed lets the first
    make the shards and the second reuse them. With ``--force`` they are remade once per process.
    """

    def __init__(self, ctx: PrepareContext, limited_manifest: Path, source_arm: str) -> None:
        self.ctx = ctx
        self.limited = limited_manifest
        self.source_arm = source_arm
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()  # makes the lock of a seed once
        self._done: set[int] = set()  # seeds whose pseudo-labels this object made

    def __call__(self, seed: int) -> Path | None:
        with self._guard:
            lock = self._locks.setdefault(seed, threading.Lock())
        with lock:
            return self._make(seed)

    def _make(self, seed: int) -> Path | None:
        out, d = self.ctx.out, data_dir(self.ctx.out)
        shards = d / f"shards_pseudo_s{seed}"
        if (shards / DATASET_FILE).is_file() and (not self.ctx.force or seed in self._done):
            return shards
        run_dir = train_dir(out, self.source_arm, seed)
        if not (run_dir / CONFIG_FILE).is_file():
            log(f"pseudo-labels s{seed}: {run_dir} has not finished; skipping the arms that need them")
            return None
        pred = out / "pseudo" / f"s{seed}"
        if not pred.is_dir() or self.ctx.force:
            ok = run_stage(out, "pseudo", self.source_arm, seed,
                           [*aide_ray_cmd(), "predict", "--checkpoint", str(run_dir), "--input", str(self.limited),
                            "--split", "train", "--out", str(pred), "--local", "--overwrite"],
                           log_file(out, "pseudo", f"s{seed}"))
            if not ok:
                return None
        df = read_manifest(self.limited)
        none = (df["split"] == "train") & (df["label_kind"] == "none")
        for idx in df.index[none]:
            path = find_prediction(pred, df.at[idx, "case_id"])
            if path is None:
                raise FileNotFoundError(f"{pred}: no pseudo-label for case {df.at[idx, 'case_id']}")
            df.at[idx, "label"] = str(path)
            df.at[idx, "label_kind"] = "lq"
        manifest = d / f"pseudo_s{seed}.csv"
        write_manifest(df, manifest)
        if shards.exists():
            shutil.rmtree(shards)
        self._done.add(seed)
        return ingest_once(manifest, shards, self.ctx.inputs)
