"""Data preparation of the settings: manifests, label corruption, pseudo-labels and Parquet shards.

Each recipe turns a public dataset folder into the training sets its setting's
arms name (``data: noisy``; the scribble settings' scribbles are drawn from the
masks), the reference manifest the test split is scored against, and a
sentence about the data for the results page. A setting's
catalogue file names its recipe and options; :func:`recipe_of` checks them and
:func:`prepare_setting` runs it. Everything is made once under ``OUT/data`` and
reused on a rerun. The split, the label noise and the random-rater draw always
use :data:`NOISE_SEED` (data, not training), so every training seed sees the
same data. This module and the domain-shift recipe's own
(:mod:`aide_ray.experiments.domain_shift`) are the only ones of the experiments that make data.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.noise import PROTOCOLS, SCRIBBLES, NoiseOptions, corrupt_manifest
from aide_ray.data.recipes import qubiq_manifest, shenzhen_manifest
from aide_ray.data.scribbles import ScribbleOptions, scribble_coverage
from aide_ray.data.shards import read_slices_local
from aide_ray.eval.label_quality import noisy_label_dice
from aide_ray.exceptions import ConfigError
from aide_ray.experiments.catalogue import Setting
from aide_ray.experiments.domain_shift import DATA_KEYS as DOMAIN_SHIFT_KEYS, shenzhen_domain_shift
from aide_ray.experiments.layout import data_dir
from aide_ray.experiments.recipe_steps import NOISE_SEED, PseudoLabels, case_counts, ingest_once
from aide_ray.experiments.recipe_types import LaterData, PrepareContext, Prepared, Recipe

__all__ = ["NOISE_SEED", "PrepareContext", "Prepared", "LaterData", "Recipe", "RECIPES", "recipe_of",
           "prepare_setting", "ingest_once"]

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
    note = (f"Cases (train, val, test): {case_counts(clean)}. Train labels: pymic-jsrt noise (seed {NOISE_SEED}), "
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
    note = (f"Cases (train, val, test): {case_counts(clean)}. Train labels: {int(clean_fraction * 100)}% of the train cases "
            f"clean, the others corrupted (seed {NOISE_SEED}; magnitude {magnitude:g} px at 256, affected fraction "
            f"{affected_fraction:g}, strength {strength:g}); mean Dice of noisy vs clean label: "
            f"{', '.join(qualities)}. Test references: the original masks.")
    return Prepared(train=train_sets, reference=clean, note=note)


def _qubiq_raters(ctx: PrepareContext) -> Path:
    """The QUBIQ manifest of every rater (70/10/20 by case), made once: the test references of its settings."""
    every = data_dir(ctx.out) / "all_raters.csv"
    if not every.is_file():
        every.parent.mkdir(parents=True, exist_ok=True)
        qubiq_manifest(ctx.data, every, split_seed=NOISE_SEED, label_kind="hq")
    return every


def qubiq_annotators(ctx: PrepareContext) -> Prepared:
    """Setting 2: the all-rater manifest and two training sets: "rater1", and "random" (a rater per case)."""
    d = data_dir(ctx.out)
    every = _qubiq_raters(ctx)
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
    note = (f"Cases (train, val, test): {case_counts(every)}; {len(raters)} raters. Training and validation use one "
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
    note = (f"Cases (train, val, test): {case_counts(clean)}. HQ labels kept for "
            f"{int((train['label_kind'] == 'hq').sum())} train cases (seed {NOISE_SEED}); the other "
            f"{int((train['label_kind'] == 'none').sum())} get LQ pseudo-labels predicted by the same seed's "
            f"`{pseudo_labels_from}` model. Test references: the original masks.")
    d = data_dir(ctx.out)
    pseudo = PseudoLabels(ctx, limited, pseudo_labels_from)
    return Prepared(train={"hq10": ingest_once(limited, d / "shards_hq10", ctx.inputs),
                           "clean": ingest_once(clean, d / "shards_clean", ctx.inputs)},
                    reference=clean, note=note, later={"pseudo": LaterData(pseudo_labels_from, pseudo)})


def _scribbled(ctx: PrepareContext, manifest: Path, options: ScribbleOptions) -> tuple[Path, str]:
    """The "scribbles" training set: ``manifest`` with its train masks made scribbles (``clean_label`` keeps the
    masks; val keeps them as labels), ingested; and a sentence on how much of the train pixels they annotate."""
    d = data_dir(ctx.out)
    scribbled = d / "scribbles" / "manifest.csv"
    if not scribbled.is_file():
        corrupt_manifest(manifest, scribbled.parent, SCRIBBLES, NOISE_SEED, overwrite=True, scribble_options=options)
    shards = ingest_once(scribbled, d / "shards_scribbles", ctx.inputs)
    rows = read_slices_local(shards, "train")
    annotated, fg = scribble_coverage(rows["label"][rows["scribble"]])
    return shards, (f"Train labels: scribbles drawn from the masks (`corrupt-labels --protocol scribbles`, seed "
                    f"{NOISE_SEED}; width {options.width:g}, keep {options.keep_fraction:g}, background distance "
                    f"{options.background_distance:g}, border distance {options.border_distance:g} px at 256 px), "
                    f"annotating {annotated:.1%} of the train pixels at the training size ({fg:.1%} foreground).")


def _scribble_options(width: float, keep: float, distance: float, border: float) -> ScribbleOptions:
    try:
        return ScribbleOptions(width=width, keep_fraction=keep, background_distance=distance, border_distance=border)
    except ValueError as e:
        raise ConfigError(f"prepare.options: {e}") from None


def shenzhen_scribbles(ctx: PrepareContext, *, scribble_width: float = 3.0, scribble_keep: float = 0.8,
                       scribble_distance: float = 8.0, scribble_border: float = 8.0) -> Prepared:
    """Scribbles on Shenzhen: the clean manifest ("clean") and its copy with scribbled train masks ("scribbles")."""
    d = data_dir(ctx.out)
    d.mkdir(parents=True, exist_ok=True)
    clean = d / "clean.csv"
    if not clean.is_file():
        shenzhen_manifest(ctx.data, clean, split_seed=NOISE_SEED)
    options = _scribble_options(scribble_width, scribble_keep, scribble_distance, scribble_border)
    shards, note = _scribbled(ctx, clean, options)
    return Prepared(train={"scribbles": shards, "clean": ingest_once(clean, d / "shards_clean", ctx.inputs)},
                    reference=clean, note=f"Cases (train, val, test): {case_counts(clean)}. {note} Validation and test "
                                          f"references: the original masks.")


def qubiq_scribbles(ctx: PrepareContext, *, rater: str = "rater1", scribble_width: float = 3.0,
                    scribble_keep: float = 0.8, scribble_distance: float = 8.0,
                    scribble_border: float = 8.0) -> Prepared:
    """Scribbles on QUBIQ: ``rater``'s train and val masks ("clean") and their copy with scribbled train masks
    ("scribbles"); the test split is scored against every rater, as setting 2."""
    options = _scribble_options(scribble_width, scribble_keep, scribble_distance, scribble_border)
    every = _qubiq_raters(ctx)
    df = read_manifest(every)
    one = data_dir(ctx.out) / f"train_{rater}.csv"
    if not one.is_file():
        table = df[(df["annotator"] == rater) & (df["split"] != "test")].reset_index(drop=True)
        if table.empty:
            raise ConfigError(f"prepare.options.rater must be one of {sorted(set(df['annotator']))}, got {rater!r}")
        write_manifest(table, one)
    shards, note = _scribbled(ctx, one, options)
    return Prepared(train={"scribbles": shards, "clean": ingest_once(one, data_dir(ctx.out) / "shards_clean",
                                                                     ctx.inputs)},
                    reference=every, note=f"Cases (train, val, test): {case_counts(every)}; {rater}'s masks. {note} "
                                          f"Validation: {rater}'s masks; test: every rater's.")


# --------------------------------------------------------------------------- registry

# The noise protocols a headroom benchmark can train on (every one of aide_ray.data.noise but "limited" and the
# scribbles, which have recipes of their own).
PROTOCOL_KEYS: tuple[str, ...] = tuple(p for p in PROTOCOLS if p not in ("limited", SCRIBBLES))

RECIPES: dict[str, Recipe] = {
    "shenzhen_noisy": Recipe(shenzhen_noisy, ("noisy", "clean")),
    "shenzhen_protocols": Recipe(shenzhen_protocols, ("clean", *PROTOCOL_KEYS)),
    "qubiq_annotators": Recipe(qubiq_annotators, ("rater1", "random")),
    "shenzhen_limited": Recipe(shenzhen_limited, ("hq10", "clean", "pseudo"), arm_options=("pseudo_labels_from",)),
    "shenzhen_scribbles": Recipe(shenzhen_scribbles, ("scribbles", "clean")),
    "qubiq_scribbles": Recipe(qubiq_scribbles, ("scribbles", "clean")),
    "shenzhen_domain_shift": Recipe(shenzhen_domain_shift, DOMAIN_SHIFT_KEYS, arm_options=("pseudo_labels_from",)),
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
