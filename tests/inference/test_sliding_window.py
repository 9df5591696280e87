"""Tests of aide_ray.inference.sliding_window: tiles cover and average, flip TTA is the mean over flips."""

from __future__ import annotations

import pytest
import torch

from aide_ray.inference.sliding_window import flip_tta, sliding_window


def test_sliding_window_covers_and_averages():
    x = torch.rand(2, 1, 40, 57)
    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return torch.cat([t, 1 - t], dim=1)  # pointwise, so tiling must not change it

    out = sliding_window(x, 32, 0.5, fn)
    assert torch.allclose(out, torch.cat([x, 1 - x], 1))
    assert set(calls) == {(32, 32)} and len(calls) == 2 * 3
    with pytest.raises(ValueError, match="needs H, W >= 32, got H=16, W=57"):
        sliding_window(x[..., :16, :], 32, 0.5, fn)


def test_sliding_window_of_the_window_size_is_one_call():
    x = torch.rand(1, 2, 8, 8)
    calls = []

    def fn(t):
        calls.append(t.shape)
        return t[:, :1]

    assert torch.equal(sliding_window(x, 8, 0.5, fn), x[:, :1])
    assert len(calls) == 1


def test_sliding_window_averages_where_tiles_overlap():
    # fn gives each tile a constant value: its call number. Overlaps hold the mean of the tiles covering them.
    x = torch.zeros(1, 1, 4, 6)
    calls = []

    def fn(t):
        calls.append(None)
        return torch.full((t.shape[0], 1, *t.shape[-2:]), float(len(calls)))

    out = sliding_window(x, 4, 0.5, fn)  # stride 2: tiles at columns 0, 2
    assert len(calls) == 2
    assert torch.equal(out[0, 0, 0], torch.tensor([1.0, 1.0, 1.5, 1.5, 2.0, 2.0]))


def test_flip_tta_is_the_mean_over_identity_and_both_flips():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    seen = []

    def fn(t):
        seen.append(t.clone())
        return t * 2.0  # equivariant under flips, so the mean equals fn(x)

    assert torch.equal(flip_tta(fn, x), x * 2.0)
    assert [torch.equal(s, e) for s, e in zip(seen, [x, x.flip(-1), x.flip(-2)])] == [True] * 3

    def corner(t):
        # Not equivariant: only the top-left pixel is 1, so each flip puts it back at a different corner.
        out = torch.zeros_like(t)
        out[..., 0, 0] = 1.0
        return out

    expected = torch.zeros_like(x)
    expected[..., 0, 0] = 1 / 3
    expected[..., 0, -1] = 1 / 3
    expected[..., -1, 0] = 1 / 3
    assert torch.allclose(flip_tta(corner, x), expected)
