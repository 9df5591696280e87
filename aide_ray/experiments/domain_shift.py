"""The data recipe of the domain-shift setting (the AIDE paper's fourth setting, on the Shenzhen lungs).

The paper trains on one domain, labels the target domain with that model's
predictions and lets AIDE correct them. Here the target domain is simulated
(:mod:`aide_ray.data.scanner_shift`): the clean Shenzhen split (70/10/20 by case,
the split of settings 1 and 3) has its train cases cut in two by case, a source
half that keeps its images and labels and a target half whose images go through
the simulated scanner; the validation and test cases are target-domain too
(shifted images, the original masks as labels and references). The recipe is
registered in :data:`aide_ray.experiments.prepare.RECIPES` and makes its pseudo-labels
with setting 3's step (:class:`aide_ray.experiments.recipe_steps.PseudoLabels`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aide_ray.data.label_kinds import NONE
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.noise import choose_cases
from aide_ray.data.recipes import shenzhen_manifest
from aide_ray.data.scanner_shift import SOURCE_DOMAIN, TARGET_DOMAIN, ScannerShift, shift_manifest
from aide_ray.exceptions import ConfigError
from aide_ray.experiments.layout import data_dir
from aide_ray.experiments.recipe_steps import NOISE_SEED, PseudoLabels, case_counts, ingest_once
from aide_ray.experiments.recipe_types import LaterData, PrepareContext, Prepared

__all__ = ["DATA_KEYS", "shenzhen_domain_shift"]

DATA_KEYS = ("source", "target_pseudo", "target_clean")  # the training sets the recipe makes

_DEFAULT = ScannerShift()


def _source_only(shifted: Path, out: Path) -> Path:
    """``shifted`` with the labels of the target train cases removed (kind none, the mask kept in clean_label)."""
    if not out.is_file():
        df = read_manifest(shifted)
        target = (df["split"] == "train") & (df["domain"] == TARGET_DOMAIN)
        df.loc[target, "clean_label"] = df.loc[target, "label"]
        df.loc[target, "label"] = ""
        df.loc[target, "label_kind"] = NONE
        write_manifest(df, out)
    return out


def shenzhen_domain_shift(ctx: PrepareContext, *, pseudo_labels_from: str, source_fraction: float = 0.5,
                          gamma: float = _DEFAULT.gamma, noise_std: float = _DEFAULT.noise_std,
                          blur_sigma: float = _DEFAULT.blur_sigma, resolution: float = _DEFAULT.resolution) -> Prepared:
    """Domain shift: "source", "target_clean", and "target_pseudo" made per seed later.

    * ``OUT/data/domain_shift/manifest.csv``: every case of the clean split; the train cases chosen
      as the source half (``source_fraction``, :func:`aide_ray.data.noise.choose_cases` with the
      split's seed) keep their images, all other cases (the target train half, val, test) read the
      shifted copies in ``domain_shift/images/``; column ``domain`` says which. Every label is the
      original mask (kind hq). This is the reference of the test split and the training set
      "target_clean" (all train cases with their true labels: the upper bound).
    * ``OUT/data/source.csv``: the same with the target train cases unlabelled (kind none): training
      set "source"; the source-only arm ``pseudo_labels_from`` trains on it and predicts the target
      train cases, whose predictions become their LQ labels in "target_pseudo" (per seed, as
      setting 3's pseudo-labels), beside the source cases' HQ labels.
    """
    if not 0.0 < source_fraction < 1.0:
        raise ConfigError(f"prepare.options.source_fraction must be in (0, 1) (the share of train cases in the "
                          f"source domain), got {source_fraction!r}")
    try:
        shift = ScannerShift(gamma=gamma, noise_std=noise_std, blur_sigma=blur_sigma, resolution=resolution)
    except ValueError as e:
        raise ConfigError(f"prepare.options: {e}") from None
    d = data_dir(ctx.out)
    d.mkdir(parents=True, exist_ok=True)
    clean = d / "clean.csv"
    if not clean.is_file():
        shenzhen_manifest(ctx.data, clean, split_seed=NOISE_SEED)
    shifted = d / "domain_shift" / "manifest.csv"
    if not shifted.is_file():
        df = read_manifest(clean)
        train = sorted(df.loc[df["split"] == "train", "case_id"].unique())
        source = choose_cases(train, source_fraction, NOISE_SEED)
        shift_manifest(clean, shifted.parent, NOISE_SEED, cases=set(df["case_id"]) - source, shift=shift,
                       overwrite=True)
    source_only = _source_only(shifted, d / "source.csv")
    table = pd.read_csv(shifted, dtype=str, keep_default_na=False)
    train = table[table["split"] == "train"]
    n_source = int((train["domain"] == SOURCE_DOMAIN).sum())
    note = (f"Cases (train, val, test): {case_counts(clean)}. Train cases split by case (seed {NOISE_SEED}) into "
            f"{n_source} source cases (original images, HQ labels) and {len(train) - n_source} target cases whose "
            f"images went through a simulated scanner ({shift.describe()}); their LQ pseudo-labels are predicted "
            f"by the same seed's `{pseudo_labels_from}` model. Validation and test: target domain (shifted images), "
            f"the original masks as references.")
    return Prepared(train={"source": ingest_once(source_only, d / "shards_source", ctx.inputs),
                           "target_clean": ingest_once(shifted, d / "shards_target_clean", ctx.inputs)},
                    reference=shifted, note=note,
                    later={"target_pseudo": LaterData(pseudo_labels_from,
                                                      PseudoLabels(ctx, source_only, pseudo_labels_from))})
