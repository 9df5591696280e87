"""Sliding-window prediction and flip test-time augmentation on tensors.

Its own file because it is plain torch on (B, M, H, W) batches: no
checkpoint, no SimpleITK, no files, so it is unit-tested on tiny tensors
with any function standing in for the networks. :mod:`aide_ray.inference.predictor`
wraps the eval nets into such a function.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ProbsFn", "sliding_window", "flip_tta"]

# Maps a (B, M, h, w) float batch to (B, C, h, w) class probabilities.
ProbsFn = Callable[[torch.Tensor], torch.Tensor]


def _starts(n: int, window: int, stride: int) -> list[int]:
    """Tile offsets along one axis of length ``n``: every ``stride``, the last tile flush with the end."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def sliding_window(x: torch.Tensor, window: int, overlap: float, fn: ProbsFn) -> torch.Tensor:
    """Apply ``fn`` on ``window`` x ``window`` tiles of ``x`` and average the overlaps.

    Args:
        x: (B, M, H, W) float with H, W >= ``window``.
        window: tile side (the training size).
        overlap: fraction of the window shared by neighbouring tiles, in [0, 1).
        fn: maps (B, M, window, window) to (B, C, window, window) probabilities.
    Returns:
        (B, C, H, W) float, the mean of every tile's output covering each pixel.
    Raises:
        ValueError: if H or W is smaller than ``window``.
    """
    h, w = x.shape[-2:]
    if h < window or w < window:
        raise ValueError(f"sliding window of {window} px needs H, W >= {window}, got H={h}, W={w}")
    if h == window and w == window:
        return fn(x)
    stride = max(1, int(round(window * (1.0 - overlap))))
    out = None
    count = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
    for top in _starts(h, window, stride):
        for left in _starts(w, window, stride):
            probs = fn(x[..., top:top + window, left:left + window])
            if out is None:
                out = torch.zeros((x.shape[0], probs.shape[1], h, w), dtype=probs.dtype, device=x.device)
            out[..., top:top + window, left:left + window] += probs
            count[..., top:top + window, left:left + window] += 1
    return out / count


def flip_tta(fn: ProbsFn, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``fn`` over the identity, a horizontal and a vertical flip of ``x``.

    A flip is its own inverse: flip the input, predict, flip the output back.

    Args:
        fn: maps (B, M, H, W) to (B, C, H, W) probabilities.
        x: (B, M, H, W) float.
    Returns:
        (B, C, H, W) float probabilities.
    """
    probs = fn(x)
    for dims in ((-1,), (-2,)):
        probs = probs + torch.flip(fn(torch.flip(x, dims)), dims)
    return probs / 3.0
