"""The noise protocols on single masks: what each does, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.data.mask_noise import MASK_PROTOCOLS, NoiseOptions, remove_one_structure, shift_mask
from aide_ray.data.noise import corrupt_volume


def _two_lungs(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[10:50, 8:28] = 1
    mask[12:52, 36:58] = 1
    return mask


def test_systematic_protocols_grow_shrink_and_shift_every_label_alike():
    mask = _two_lungs()
    rng = np.random.default_rng(0)
    opts = NoiseOptions(magnitude=8.0)  # 2 px at 64 / 256
    over = MASK_PROTOCOLS["over-seg"](mask > 0, rng, 0.25, opts)
    under = MASK_PROTOCOLS["under-seg"](mask > 0, rng, 0.25, opts)
    shifted = MASK_PROTOCOLS["shifted"](mask > 0, rng, 0.25, opts)
    assert over.sum() > mask.sum() > under.sum()
    assert (over >= mask).all() and (under <= mask).all()
    np.testing.assert_array_equal(shifted[2:], mask[:-2] > 0)
    assert not shifted[:2].any()


def test_shift_mask_loses_what_leaves_the_image():
    mask = np.zeros((4, 4), np.uint8)
    mask[3, 1] = mask[0, 0] = 1
    out = shift_mask(mask, 1, 1)
    assert out.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert shift_mask(mask, -1, 0)[2, 1] == 1


def test_remove_one_structure_drops_a_whole_component_and_ignores_specks():
    mask = _two_lungs()
    rng = np.random.default_rng(1)
    out = remove_one_structure(mask > 0, rng)
    kept = out.sum()
    assert kept in (40 * 20, 40 * 22)  # exactly one lung is left
    speck = np.zeros((16, 16), bool)
    speck[2:10, 2:10] = True
    speck[14, 14] = True  # a speck is not a structure
    np.testing.assert_array_equal(remove_one_structure(speck, rng), speck)


def test_missed_structure_hits_the_affected_share_of_cases():
    mask = _two_lungs()
    opts = NoiseOptions(affected_fraction=0.3)
    hit = [corrupt_volume(mask, np.random.default_rng(s), scale=0.25, protocol="missed-structure",
                          options=opts).sum() < mask.sum() for s in range(400)]
    assert 0.24 < np.mean(hit) < 0.36
    none = NoiseOptions(affected_fraction=0.0)
    np.testing.assert_array_equal(corrupt_volume(mask, np.random.default_rng(0), protocol="missed-structure",
                                                 options=none), mask)


def test_mixed_over_seg_dilates_the_careless_share_and_leaves_the_rest_clean():
    mask = _two_lungs()
    opts = NoiseOptions(magnitude=8.0, affected_fraction=0.4)  # 2 px at 64 / 256
    outs = [corrupt_volume(mask, np.random.default_rng(s), scale=0.25, protocol="mixed-over-seg", options=opts)
            for s in range(400)]
    grown = [out.sum() > mask.sum() for out in outs]
    assert 0.33 < np.mean(grown) < 0.47
    over = MASK_PROTOCOLS["over-seg"](mask > 0, np.random.default_rng(0), 0.25, opts)
    for out, was_grown in zip(outs, grown):
        np.testing.assert_array_equal(out, over if was_grown else mask)  # the careless label or the clean one


def test_strong_pymic_changes_labels_more_than_pymic():
    mask = _two_lungs(128)
    change = {}
    for name in ("pymic-jsrt", "pymic-jsrt-strong"):
        diffs = [np.logical_xor(corrupt_volume(mask, np.random.default_rng(s), scale=0.5, protocol=name), mask).sum()
                 for s in range(40)]
        change[name] = np.mean(diffs)
    assert change["pymic-jsrt-strong"] > 1.5 * change["pymic-jsrt"]


def test_volumes_are_reproducible_and_options_are_checked():
    vol = np.stack([_two_lungs()] * 3)
    a = corrupt_volume(vol, np.random.default_rng(5), scale=0.25, protocol="pymic-jsrt")
    b = corrupt_volume(vol, np.random.default_rng(5), scale=0.25, protocol="pymic-jsrt")
    np.testing.assert_array_equal(a, b)
    assert a.shape == vol.shape and a.dtype == np.uint8
    with pytest.raises(ValueError, match="protocol must be one of"):
        corrupt_volume(vol, np.random.default_rng(0), protocol="limited")
    with pytest.raises(ValueError, match=r"affected_fraction must be in \[0, 1\], got 1.5"):
        NoiseOptions(affected_fraction=1.5)
    with pytest.raises(ValueError, match="magnitude must be > 0, got 0"):
        NoiseOptions(magnitude=0)
