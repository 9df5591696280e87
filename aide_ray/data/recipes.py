"""Manifests for the public datasets the experiments use (layouts as in /work/shared/data).

Each function turns a dataset folder, as described by its SOURCE.md, into a
manifest CSV with a seeded case-level train/val/test split, so experiment
recipes never hand-write file lists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aide_ray.data.manifest import write_manifest
from aide_ray.exceptions import InputError

__all__ = ["split_cases", "qubiq_manifest", "shenzhen_manifest"]

_QUBIQ_MASK = re.compile(r"^(case\d+)_rater(\d+)\.png$")


def split_cases(case_ids: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> dict[str, str]:
    """Seeded case-level split.

    val and test get ``round(fraction * n)`` cases each, train the rest.

    Args:
        case_ids: distinct case ids.
        fractions: (train, val, test), non-negative, summing to 1.
        seed: random seed.
    Returns:
        case_id -> "train" | "val" | "test".
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {tuple(fractions)!r}")
    ids = sorted(set(case_ids))
    n = len(ids)
    n_val, n_test = int(round(fractions[1] * n)), int(round(fractions[2] * n))
    order = np.random.default_rng(int(seed)).permutation(n)
    split = {}
    for rank, i in enumerate(order):
        split[ids[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputError(f"{path} not found: expected the {what} folder")


def qubiq_manifest(data_dir: str | os.PathLike, out_csv: str | os.PathLike, *, split_seed: int = 0,
                   fractions: Sequence[float] = (0.7, 0.1, 0.2), label_kind: str = "hq") -> Path:
    """Manifest of QUBIQ brain growth: one row per image x rater.

    Layout: ``images/caseNN.png`` and ``masks/caseNN_raterK.png`` (0/255).
    ``annotator`` is ``raterK``; all raters of a case share its split.

    Args:
        data_dir: dataset folder.
        out_csv: manifest to write (atomically); paths in it are absolute.
        split_seed: seed of the case-level split.
        fractions: (train, val, test) case fractions.
        label_kind: kind given to every rater's label ("hq" or "lq").
    Returns:
        ``out_csv``.
    Raises:
        InputError: missing folders, a mask without its image, or no masks.
    """
    data_dir = Path(data_dir).resolve()
    _require_dir(data_dir / "images", "QUBIQ images")
    _require_dir(data_dir / "masks", "QUBIQ masks")
    rows = []
    for mask in sorted((data_dir / "masks").iterdir()):
        m = _QUBIQ_MASK.match(mask.name)
        if not m:
            continue
        case_id, rater = m.group(1), int(m.group(2))
        image = data_dir / "images" / f"{case_id}.png"
        if not image.is_file():
            raise InputError(f"{mask}: image {image} not found")
        rows.append({"case_id": case_id, "image": str(image), "label": str(mask), "label_kind": label_kind,
                     "annotator": f"rater{rater}", "domain": "", "split": "", "clean_label": ""})
    if not rows:
        raise InputError(f"{data_dir / 'masks'}: no caseNN_raterK.png masks found")
    rows.sort(key=lambda r: (_natural_key(r["case_id"]), _natural_key(r["annotator"])))
    df = pd.DataFrame(rows)
    split = split_cases(df["case_id"].tolist(), fractions, split_seed)
    df["split"] = df["case_id"].map(split)
    return write_manifest(df, out_csv)


def _natural_key(value: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", value))


def shenzhen_manifest(data_dir: str | os.PathLike, out_csv: str | os.PathLike, split_seed: int = 0,
                      fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> Path:
    """Manifest of the Shenzhen chest X-ray lung set: one row per image, HQ labels.

    Layout: ``images/NAME.png`` and ``masks/NAME.png`` (0/255), same names.

    Args:
        data_dir: dataset folder.
        out_csv: manifest to write (atomically); paths in it are absolute.
        split_seed: seed of the split.
        fractions: (train, val, test) fractions.
    Returns:
        ``out_csv``.
    Raises:
        InputError: missing folders, an image without a mask, or no images.
    """
    data_dir = Path(data_dir).resolve()
    _require_dir(data_dir / "images", "Shenzhen images")
    _require_dir(data_dir / "masks", "Shenzhen masks")
    rows = []
    for image in sorted((data_dir / "images").glob("*.png")):
        mask = data_dir / "masks" / image.name
        if not mask.is_file():
            raise InputError(f"{image}: mask {mask} not found")
        rows.append({"case_id": image.stem, "image": str(image), "label": str(mask), "label_kind": "hq",
                     "annotator": "", "domain": "", "split": "", "clean_label": ""})
    if not rows:
        raise InputError(f"{data_dir / 'images'}: no PNG images found")
    df = pd.DataFrame(rows)
    df["split"] = df["case_id"].map(split_cases(df["case_id"].tolist(), fractions, split_seed))
    return write_manifest(df, out_csv)
