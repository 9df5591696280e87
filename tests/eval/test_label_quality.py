"""Label quality of a manifest: each noisy label against its clean one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from aide_ray.eval.label_quality import noisy_label_dice


def _mask(path, rows: slice):
    arr = np.zeros((1, 8, 8), np.uint8)
    arr[0, rows, 2:6] = 1
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return str(path)


def test_noisy_label_dice_per_row_and_nan_for_two_empty_masks(tmp_path):
    clean = _mask(tmp_path / "clean.nii.gz", slice(2, 6))  # 16 pixels
    noisy = _mask(tmp_path / "noisy.nii.gz", slice(2, 4))  # 8 of them
    empty = _mask(tmp_path / "empty.nii.gz", slice(0, 0))
    manifest = pd.DataFrame({"label": [noisy, empty, "", clean], "clean_label": [clean, empty, clean, clean]})
    scores = noisy_label_dice(manifest)
    assert scores.index.tolist() == [0, 1, 3]  # row 2 has no label
    assert scores[0] == pytest.approx(2 * 8 / 24) and np.isnan(scores[1]) and scores[3] == 1.0
