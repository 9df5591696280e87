"""How good a set of training labels is: each label against the clean (HQ) one, where the manifest has both.

Used to report the noise a protocol puts into the labels (``aide-ray
corrupt-labels``, the experiments' data notes) before any method is trained on
them.
"""

from __future__ import annotations

import pandas as pd

from aide_ray.data.image_io import label_array, read_image
from aide_ray.eval.dice import mask_dice

__all__ = ["noisy_label_dice"]


def noisy_label_dice(manifest: pd.DataFrame) -> pd.Series:
    """Dice between ``label`` and ``clean_label`` of each labelled row that has both (diagnostics).

    Two empty masks give NaN: a case without foreground says nothing about how
    noisy the labels are, so it is left out of the mean that ``aide-ray corrupt-labels`` prints.
    """
    scores = {}
    for row, rec in manifest.iterrows():
        if rec["label"] and rec["clean_label"]:
            a = label_array(read_image(rec["label"]), rec["label"])
            b = label_array(read_image(rec["clean_label"]), rec["clean_label"])
            scores[row] = mask_dice(a, b, both_empty=float("nan"))
    return pd.Series(scores, name="dice", dtype=float)
