"""Data preparation of the settings: manifests, label corruption, pseudo-labels and Parquet shards.

Each recipe turns a public dataset folder into the training sets its setting's
arms name (``data: noisy``), the reference manifest the test split is scored
against, and a sentence about the data for the results page. A setting's
catalogue file names its recipe and options; :func:`recipe_of` checks them and
:func:`prepare_setting` runs it. Everything is made once under ``OUT/data`` and
reused on a rerun. The split, the label noise and the random-rater draw always
use :data:`NOISE_SEED` (data, not training), so every training seed sees the
same data. This is the only module of the experiments that makes data.
"""

from __future__ import annotations

import difflib
import inspect
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from aide_ray.data.ingest import ingest
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.noise import PROTOCOLS, NoiseOptions, corrupt_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.recipes import qubiq_manifest, shenzhen_manifest
from aide_ray.eval.evaluate import find_prediction
from aide_ray.eval.label_quality import noisy_label_dice
from aide_ray.exceptions import ConfigError
from aide_ray.experiments.catalogue import Inputs, Setting
from aide_ray.experiments.layout import data_dir, log_file, train_dir
from aide_ray.experiments.stages import aide_ray_cmd, log, run_stage
from aide_ray.runs.folder import CONFIG_FILE, DATASET_FILE

__all__ = ["NOISE_SEED", "PrepareContext", "Prepared", "LaterData", "Recipe", "RECIPES", "recipe_of",
           "prepare_setting", "ingest_once"]

NOISE_SEED = 0  # seed of the case split, the label corruption and the random-rater draw (data, not training)


@dataclass(frozen=True)
class PrepareContext:
    """What every recipe gets: the dataset, the experiment folder, the ingest size, ``--force``."""

    data: Path
    out: Path
    inputs: Inputs
    force: bool = False


@dataclass(frozen=True)
class LaterData:
    """A training set made during the run, per seed, from another arm's finished run of that seed.

    Attributes:
        after_arm: the arm whose run of the seed must finish first.
        make: seed -> shards folder, or None when that run did not finish (its arms are skipped).
    """

    after_arm: str
    make: Callable[[int], Path | None]


@dataclass(frozen=True)
class Prepared:
    """What a recipe made.

    Attributes:
        train: training-set key -> Parquet shards folder.
        reference: manifest whose test rows hold the HQ masks the predictions are scored against.
        note: a sentence about the data (cases per split, noise) for ``experiment.json`` and the results page.
        later: training-set key -> a set made during the run (setting 3's pseudo-labels).
    """

    train: Mapping[str, Path]
    reference: Path
    note: str
    later: Mapping[str, LaterData] = field(default_factory=dict)


def ingest_once(manifest: Path, shards: Path, inputs: Inputs) -> Path:
    """Ingest ``manifest`` into ``shards`` unless that folder is complete already."""
    if not (shards / DATASET_FILE).is_file():
        log(f"ingest {manifest} -> {shards} (size {inputs.size}, spacing {inputs.spacing})")
        ingest(manifest, shards, Preprocessing(target_spacing=inputs.spacing, size=inputs.size, normalize="zscore"),
               overwrite=True)
    return shards


def _counts(manifest: Path) -> str:
    df = pd.read_csv(manifest)
    return ", ".join(f"{s} {df[df['split'] == s]['case_id'].nunique()}" for s in ("train", "val", "test"))


def _shenzhen(ctx: PrepareContext, protocol: str, folder: str, **options: Any) -> tuple[Path, Path, pd.DataFrame]:
    """Settings 1 and 3: the clean Shenzhen manifest (70/10/20 by case) and its ``protocol`` copy.

    The copy goes to ``OUT/data/<folder>/manifest.csv``; both are made once and reused.

    Returns:
        (clean manifest, corrupted manifest, the corrupted manifest's train rows).
    """
    d = data_dir(ctx.out)
    d.mkdir(parents=True, exist_ok=True)
    clean = d / "clean.csv"
    if not clean.is_file():
        shenzhen_manifest(ctx.data, clean, split_seed=NOISE_SEED)
    corrupted = d / folder / "manifest.csv"
    if not corrupted.is_file():
        corrupt_manifest(clean, corrupted.parent, protocol, NOISE_SEED, overwrite=True, **options)
    train = read_manifest(corrupted)
    return clean, corrupted, train[train["split"] == "train"]


def shenzhen_noisy(ctx: PrepareContext, *, clean_fraction: float) -> Prepared:
    """Setting 1: the clean manifest, its pymic-jsrt noisy copy, both ingested (sets "noisy" and "clean")."""
    clean, noisy, train = _shenzhen(ctx, "pymic-jsrt", "noisy", clean_fraction=clean_fraction)
    dice = noisy_label_dice(train[train["label_kind"] == "lq"])
    note = (f"Cases (train, val, test): {_counts(clean)}. Train labels: pymic-jsrt noise (seed {NOISE_SEED}), "
            f"{int((train['label_kind'] == 'hq').sum())} cases clean, {int((train['label_kind'] == 'lq').sum())} "
            f"noisy, mean Dice of noisy vs clean label {dice.mean():.3f}. Test references: the original masks.")
    d = data_dir(ctx.out)
    return Prepared(train={"noisy": ingest_once(noisy, d / "shards_noisy", ctx.inputs),
                           "clean": ingest_once(clean, d / "shards_clean", ctx.inputs)},
                    reference=clean, note=note)


def shenzhen_protocols(ctx: PrepareContext, *, protocols: list[str], clean_fraction: float, magnitude: float = 8.0,
                       affected_fraction: float = 0.5, strength: float = 2.0) -> Prepared:
    """The headroom benchmark: the clean manifest ("clean") and one noisy copy per protocol (keyed by its name).

    Every copy keeps the same ``clean_fraction`` of train cases clean (kind hq) and corrupts the
    others with its protocol (docs/data.md); the note gives each protocol's label quality.
    """
    unknown = sorted(set(protocols) - set(PROTOCOL_KEYS))
    if unknown:
        raise ConfigError(f"prepare.options.protocols must be among {list(PROTOCOL_KEYS)}, got {unknown}")
    options = NoiseOptions(magnitude=magnitude, affected_fraction=affected_fraction, strength=strength)
    d = data_dir(ctx.out)
    train_sets: dict[str, Path] = {}
    qualities = []
    clean = None
    for protocol in protocols:
        clean, noisy, train = _shenzhen(ctx, protocol, f"noisy_{protocol}", clean_fraction=clean_fraction,
                                        options=options)
        dice = noisy_label_dice(train[train["label_kind"] == "lq"])
        qualities.append(f"{protocol} {dice.mean():.3f}")
        train_sets[protocol] = ingest_once(noisy, d / f"shards_{protocol}", ctx.inputs)
    if clean is None:
        raise ConfigError("prepare.options.protocols must name at least one protocol")
    train_sets["clean"] = ingest_once(clean, d / "shards_clean", ctx.inputs)
    note = (f"Cases (train, val, test): {_counts(clean)}. Train labels: {int(clean_fraction * 100)}% of the train cases "
            f"clean, the others corrupted (seed {NOISE_SEED}; magnitude {magnitude:g} px at 256, affected fraction "
            f"{affected_fraction:g}, strength {strength:g}); mean Dice of noisy vs clean label: "
            f"{', '.join(qualities)}. Test references: the original masks.")
    return Prepared(train=train_sets, reference=clean, note=note)


def qubiq_annotators(ctx: PrepareContext) -> Prepared:
    """Setting 2: the all-rater manifest and two training sets: "rater1", and "random" (a rater per case)."""
    d = data_dir(ctx.out)
    d.mkdir(parents=True, exist_ok=True)
    every = d / "all_raters.csv"
    if not every.is_file():
        qubiq_manifest(ctx.data, every, split_seed=NOISE_SEED, label_kind="hq")
    df = read_manifest(every)
    fit = df[df["split"].isin(["train", "val"])].copy()
    # Training labels are one expert's opinion, so they are the "lq" labels AIDE may correct;
    # validation labels only pick the best checkpoint and are never relabelled.
    fit.loc[fit["split"] == "train", "label_kind"] = "lq"
    raters = sorted(fit["annotator"].unique(), key=lambda s: (len(s), s))
    rng = np.random.default_rng(NOISE_SEED)
    cases = sorted(fit["case_id"].unique())
    pick = dict(zip(cases, rng.choice(raters, size=len(cases))))
    manifests = {"rater1": fit[fit["annotator"] == "rater1"],
                 "random": fit[[pick[c] == a for c, a in zip(fit["case_id"], fit["annotator"])]]}
    train = {}
    for name, table in manifests.items():
        path = d / f"train_{name}.csv"
        if not path.is_file():
            write_manifest(table.reset_index(drop=True), path)
        train[name] = ingest_once(path, d / f"shards_{name}", ctx.inputs)
    chosen = manifests["random"][manifests["random"]["split"] == "train"]["annotator"].value_counts()
    note = (f"Cases (train, val, test): {_counts(every)}; {len(raters)} raters. Training and validation use one "
            f"label per case: rater1's, or a rater drawn per case (seed {NOISE_SEED}; train draws: "
            + ", ".join(f"{r} {chosen[r]}" for r in sorted(chosen.index, key=lambda s: (len(s), s)))
            + "). Test: one prediction per case scored against each of the 7 raters.")
    return Prepared(train=train, reference=every, note=note)


def shenzhen_limited(ctx: PrepareContext, *, labelled_fraction: float, pseudo_labels_from: str) -> Prepared:
    """Setting 3: the clean manifest ("clean"), its 10%-labelled copy ("hq10"), and "pseudo" made per seed later.

    "pseudo" is the labelled copy with the unlabelled train cases given the LQ pseudo-labels that the
    same seed's ``pseudo_labels_from`` run predicts (:class:`_PseudoLabels`).
    """
    clean, limited, train = _shenzhen(ctx, "limited", "limited", labelled_fraction=labelled_fraction)
    note = (f"Cases (train, val, test): {_counts(clean)}. HQ labels kept for "
            f"{int((train['label_kind'] == 'hq').sum())} train cases (seed {NOISE_SEED}); the other "
            f"{int((train['label_kind'] == 'none').sum())} get LQ pseudo-labels predicted by the same seed's "
            f"`{pseudo_labels_from}` model. Test references: the original masks.")
    d = data_dir(ctx.out)
    pseudo = _PseudoLabels(ctx, limited, pseudo_labels_from)
    return Prepared(train={"hq10": ingest_once(limited, d / "shards_hq10", ctx.inputs),
                           "clean": ingest_once(clean, d / "shards_clean", ctx.inputs)},
                    reference=clean, note=note, later={"pseudo": LaterData(pseudo_labels_from, pseudo)})


class _PseudoLabels:
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


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Recipe:
    """A data preparation a catalogue file can name.

    Attributes:
        prepare: ``(ctx, **options) -> Prepared``; its keyword-only parameters are the recipe's options.
        data_keys: the training sets it makes (an arm's ``data``).
        arm_options: options whose value must name an arm of the setting.
    """

    prepare: Callable[..., Prepared]
    data_keys: tuple[str, ...]
    arm_options: tuple[str, ...] = ()

    def options(self) -> dict[str, bool]:
        """Option name -> whether it is required (no default)."""
        params = inspect.signature(self.prepare).parameters.values()
        return {p.name: p.default is inspect.Parameter.empty for p in params if p.kind is p.KEYWORD_ONLY}


# The noise protocols a headroom benchmark can train on (every one of aide_ray.data.noise but "limited").
PROTOCOL_KEYS: tuple[str, ...] = tuple(p for p in PROTOCOLS if p != "limited")

RECIPES: dict[str, Recipe] = {
    "shenzhen_noisy": Recipe(shenzhen_noisy, ("noisy", "clean")),
    "shenzhen_protocols": Recipe(shenzhen_protocols, ("clean", *PROTOCOL_KEYS)),
    "qubiq_annotators": Recipe(qubiq_annotators, ("rater1", "random")),
    "shenzhen_limited": Recipe(shenzhen_limited, ("hq10", "clean", "pseudo"), arm_options=("pseudo_labels_from",)),
}


def _hint(value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def recipe_of(setting: Setting) -> Recipe:
    """The setting's recipe, checked against its options and the training sets its arms name.

    Raises:
        ConfigError: naming the catalogue file and key: unknown recipe or option, a missing option, an
            arm option naming no arm, an arm's ``data`` the recipe does not make.
    """
    src = setting.source
    if setting.recipe not in RECIPES:
        raise ConfigError(f"{src}: prepare.recipe must be one of {sorted(RECIPES)}, got {setting.recipe!r}"
                          + _hint(setting.recipe, sorted(RECIPES)))
    recipe = RECIPES[setting.recipe]
    known = recipe.options()
    for key in setting.recipe_options:
        if key not in known:
            raise ConfigError(f"{src}: keys of prepare.options must be among {sorted(known)} (the options of "
                              f"recipe {setting.recipe!r}), got {key!r}" + _hint(key, sorted(known)))
    for key, required in known.items():
        if required and key not in setting.recipe_options:
            raise ConfigError(f"{src}: prepare.options.{key} is missing (recipe {setting.recipe!r} needs it)")
    for key in recipe.arm_options:
        value = setting.recipe_options[key]
        if value not in setting.arm_names:
            raise ConfigError(f"{src}: prepare.options.{key} must be an arm of the setting {setting.arm_names}, "
                              f"got {value!r}" + _hint(str(value), setting.arm_names))
    for arm in setting.arms:
        if arm.data not in recipe.data_keys:
            raise ConfigError(f"{src}: arms ({arm.name}).data must be one of {list(recipe.data_keys)} (the training "
                              f"sets of recipe {setting.recipe!r}), got {arm.data!r}"
                              + _hint(arm.data, list(recipe.data_keys)))
    return recipe


def prepare_setting(setting: Setting, ctx: PrepareContext) -> Prepared:
    """Run the setting's recipe with its catalogue options."""
    return recipe_of(setting).prepare(ctx, **setting.recipe_options)
