"""Largest connected component and hole filling on hand-made 2D and 3D label maps."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.eval.postprocess import fill_holes, largest_component, postprocess


def test_largest_component_2d_keeps_biggest_and_respects_connectivity():
    m = np.zeros((10, 10), np.uint8)
    m[1:5, 1:5] = 1  # 16 px
    m[7:9, 7:9] = 1  # 4 px, separate
    m[5, 5] = 1  # touches the big square only diagonally
    out = largest_component(m)  # full connectivity: the diagonal pixel joins the square
    assert out[1:6, 1:6].sum() == 17 and out[7:9, 7:9].sum() == 0
    out4 = largest_component(m, connectivity=1)
    assert out4[5, 5] == 0 and out4[1:5, 1:5].all()
    assert out.dtype == m.dtype and m[7:9, 7:9].all()  # input untouched


def test_largest_component_3d_per_class():
    m = np.zeros((4, 8, 8), np.int64)
    m[0:3, 0:3, 0:3] = 1
    m[3, 7, 7] = 1
    m[0:2, 5:8, 5:8] = 2
    m[3, 0, 7] = 2
    out = largest_component(m)
    assert (out == 1).sum() == 27 and (out == 2).sum() == 18
    assert out[3, 7, 7] == 0 and out[3, 0, 7] == 0


def test_fill_holes_slice_vs_3d_and_classes():
    m = np.zeros((3, 7, 7), np.uint8)
    m[:, 1:6, 1:6] = 1
    m[:, 3, 3] = 0  # a tube open at both ends along z: a hole in each slice, not a 3D cavity
    assert fill_holes(m)[:, 3, 3].tolist() == [1, 1, 1]
    assert fill_holes(m, mode="3d")[:, 3, 3].tolist() == [0, 0, 0]
    # A class enclosed by another is not overwritten.
    m2 = np.zeros((7, 7), np.uint8)
    m2[1:6, 1:6] = 1
    m2[2, 2] = 0
    m2[3, 3] = 2
    out = fill_holes(m2)
    assert out[2, 2] == 1 and out[3, 3] == 2


def test_postprocess_order_and_flags():
    m = np.zeros((9, 9), bool)
    m[0:5, 0:5] = True
    m[2, 2] = False
    m[7:9, 7:9] = True
    assert np.array_equal(postprocess(m, largest_component=False, fill_holes=False), m)
    out = postprocess(m, largest_component=True, fill_holes=True)
    assert out[0:5, 0:5].all() and not out[7:9, 7:9].any()
    assert postprocess(m, largest_component=False, fill_holes=False) is not m


def test_errors():
    with pytest.raises(ValueError, match=r"2D \(H, W\) or 3D \(D, H, W\), got shape \(4,\)"):
        largest_component(np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"connectivity must be in \[1, 2\] for a 2D mask, got 3"):
        largest_component(np.zeros((4, 4), np.uint8), connectivity=3)
    with pytest.raises(ValueError, match="integer class values or bool, got dtype float32"):
        fill_holes(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"mode must be one of \['slice', '3d'\], got 'xy'"):
        fill_holes(np.zeros((4, 4), np.uint8), mode="xy")
