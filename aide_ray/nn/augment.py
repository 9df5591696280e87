"""AIDE's augmented pseudo-labels: K rotated/flipped views, one batched forward, inverse warp, average.

The reference code rotates each view with PIL on the CPU, runs one forward pass
per view, rotates the *logits* back with PIL and fills the pixels that leave
the view with zeros, which become a uniform softmax and bias the corners. Here
the whole batch is warped at once on the device with ``affine_grid`` /
``grid_sample``; the K x B views go through a single forward pass; the
*probabilities* are warped back, together with a ones image that marks which
original pixels each view actually saw, and each pixel averages only the views
that covered it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aide_ray.nn.modules import unwrap
from aide_ray.nn.losses import sharpen

__all__ = ["Views", "random_views", "warp_to_views", "warp_from_views", "augmented_pseudo_label",
           "default_rows_per_pass", "MIN_COVERAGE"]

# A pixel counts as seen when the views together cover at least half a pixel
# footprint; below that the unaugmented prediction is used.
MIN_COVERAGE = 0.5


def default_rows_per_pass(image: Tensor) -> int | None:
    """How many views AIDE sends through the net per pseudo-label forward pass.

    On accelerators: all K x B views in one pass (None). On the CPU: B rows per
    pass, the size of the training forward pass. glibc serves every allocation
    above 32 MiB with a fresh mmap and returns it on free, so each activation
    of a large pass is page-faulted and zeroed again: at 8 x 4 views of
    128 x 128 with base width 16 one pass of 32 rows took ~0.94 s of CPU time,
    four passes of 8 rows ~0.55 s (and one pass ~0.51 s with
    ``MALLOC_MMAP_THRESHOLD_`` raised, confirming the cause).
    """
    return image.shape[0] if image.device.type == "cpu" else None


@dataclass(frozen=True)
class Views:
    """K random views of a batch: view n = k * B + b is row b rotated by ``angles_deg[n]``, maybe flipped.

    Attributes:
        angles_deg: (K * B,) float32 rotation angles in degrees.
        flips: (K * B,) bool, horizontal flip applied after the rotation.
    """

    angles_deg: Tensor
    flips: Tensor

    def __len__(self) -> int:
        return int(self.angles_deg.shape[0])


def random_views(batch_size: int, k: int, theta_deg: float, *, generator: torch.Generator | None = None) -> Views:
    """Uniform angles in [-theta, theta] and fair-coin horizontal flips for K views of B rows (on the CPU)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= theta_deg <= 180.0:
        raise ValueError(f"theta_deg must be in [0, 180], got {theta_deg}")
    n = k * batch_size
    angles = (torch.rand(n, generator=generator) * 2.0 - 1.0) * theta_deg
    flips = torch.rand(n, generator=generator) < 0.5
    return Views(angles, flips)


def _matrices(views: Views, height: int, width: int, *, inverse: bool, device: torch.device,
              dtype: torch.dtype) -> Tensor:
    """(N, 2, 3) ``affine_grid`` matrices in normalised coordinates.

    ``affine_grid`` maps an output location to the input location it samples.
    The view samples the image at ``A q`` with ``A = S^-1 R F S`` (F the flip,
    R the rotation in pixel units, S = diag(W/2, H/2) so that non-square images
    rotate rigidly); going back samples the view at ``A^-1 p``.
    """
    a = torch.deg2rad(views.angles_deg.to(device=device, dtype=torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    f = torch.where(views.flips.to(device), -1.0, 1.0).to(torch.float64)
    sx, sy = width / 2.0, height / 2.0
    # R F = [[cos * f, -sin], [sin * f, cos]]; conjugating by S scales the off-diagonals.
    m00, m01 = cos * f, -sin * (sy / sx)
    m10, m11 = sin * f * (sx / sy), cos
    if inverse:  # (S^-1 R F S)^-1 = S^-1 F R^T S: det(R F) = f, so the inverse is adj / f.
        m00, m01, m10, m11 = m11 * f, -m01 * f, -m10 * f, m00 * f
    zeros = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([m00, m01, zeros], dim=1), torch.stack([m10, m11, zeros], dim=1)], dim=1)
    return mat.to(dtype)


def warp_to_views(image: Tensor, views: Views) -> Tensor:
    """The K x B views of a batch.

    Args:
        image: (B, M, H, W) float.
        views: K * B views (``random_views``).

    Returns:
        (K * B, M, H, W); pixels that come from outside the image are 0.
    """
    b, m, h, w = image.shape
    if len(views) % b:
        raise ValueError(f"number of views ({len(views)}) must be a multiple of the batch size ({b})")
    k = len(views) // b
    x = image.repeat(k, 1, 1, 1)
    theta = _matrices(views, h, w, inverse=False, device=image.device, dtype=image.dtype)
    grid = F.affine_grid(theta, [k * b, m, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_from_views(view_maps: Tensor, views: Views) -> tuple[Tensor, Tensor]:
    """Map per-view maps back to the original frame, with the share of each pixel the view saw.

    Args:
        view_maps: (N, C, H, W) float, e.g. softmax of the views.
        views: the N views the maps were computed on.

    Returns:
        back: (N, C, H, W), bilinear, 0 where the view did not see the pixel.
        valid: (N, 1, H, W) in [0, 1], a ones image warped the same way: the
            fraction of the pixel's bilinear footprint that lies inside the view.
    """
    n, c, h, w = view_maps.shape
    if len(views) != n:
        raise ValueError(f"got {n} view maps for {len(views)} views")
    ones = torch.ones(n, 1, h, w, device=view_maps.device, dtype=view_maps.dtype)
    theta = _matrices(views, h, w, inverse=True, device=view_maps.device, dtype=view_maps.dtype)
    grid = F.affine_grid(theta, [n, c + 1, h, w], align_corners=False)
    # One grid_sample for the maps and the ones image together.
    out = F.grid_sample(torch.cat([view_maps, ones], dim=1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out[:, :c], out[:, c:]


def augmented_pseudo_label(
    net: nn.Module,
    image: Tensor,
    k: int,
    theta_deg: float,
    temperature: float,
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
    fallback_probs: Tensor | None = None,
    rows_per_pass: int | None = None,
) -> Tensor:
    """AIDE's soft pseudo-label of a batch: mean softmax over K augmented views, sharpened.

    The K x B views go through ONE forward pass (or, with ``rows_per_pass``,
    equivalent passes of fewer rows) under ``torch.no_grad()``, in eval mode by default (batch-norm running statistics; the previous mode is restored
    after). A DistributedDataParallel wrapper is bypassed (``unwrap``): the pass
    needs no gradient synchronisation. Each view's softmax is warped back to the
    original frame; every pixel averages the views weighted by how much of it
    each view saw (out-of-view pixels weigh 0); pixels that no view covered
    (coverage < ``MIN_COVERAGE``: image corners under large rotations) take the
    unaugmented prediction. The result is sharpened with ``temperature``.

    Args:
        net: maps (N, M, H, W) to logits (N, C, H, W).
        image: (B, M, H, W) float batch.
        k: number of views K per row.
        theta_deg: rotations are uniform in [-theta_deg, theta_deg].
        temperature: sharpening temperature T (``sharpen``).
        eval_mode: run the views in eval mode (True) or in the net's current mode.
        generator: CPU generator for the angles and flips (None: the global RNG).
        fallback_probs: (B, C, H, W) unaugmented probabilities for uncovered
            pixels; None computes them with an extra forward pass of the rows
            that need it. AIDE passes the softmax of the training forward it has
            already run, saving that pass.
        rows_per_pass: None runs all K x B views in one forward pass. In eval
            mode the rows are independent (batch norm uses running statistics),
            so splitting the views into passes of at most this many rows gives
            the same result; on the CPU this is faster once activations exceed
            glibc's 32 MiB mmap threshold (see :func:`default_rows_per_pass`).
            Ignored (one pass) when ``eval_mode`` is False, where batch
            statistics couple the rows.

    Returns:
        (B, C, H, W) float probabilities (no gradient), summing to 1 over C.
    """
    if image.dim() != 4:
        raise ValueError(f"image must have shape (B, M, H, W), got {tuple(image.shape)}")
    b = image.shape[0]
    views = random_views(b, k, theta_deg, generator=generator)
    module = unwrap(net)
    was_training = module.training
    try:
        if eval_mode:
            module.eval()
        with torch.no_grad():
            x = warp_to_views(image, views)
            if rows_per_pass is None or not eval_mode or rows_per_pass >= x.shape[0]:
                logits = module(x)
            else:
                logits = torch.cat([module(chunk) for chunk in x.split(rows_per_pass)])
            probs = torch.softmax(logits, dim=1)
            back, valid = warp_from_views(probs, views)
            c = back.shape[1]
            total = back.reshape(k, b, c, *back.shape[2:]).sum(dim=0)
            coverage = valid.reshape(k, b, 1, *valid.shape[2:]).sum(dim=0)
            mean = total / coverage.clamp_min(1e-6)
            uncovered = coverage < MIN_COVERAGE  # (B, 1, H, W)
            if bool(uncovered.any()):
                if fallback_probs is None:
                    rows = uncovered.flatten(1).any(dim=1).nonzero().squeeze(1)
                    fallback_probs = torch.zeros_like(mean)
                    fallback_probs[rows] = torch.softmax(module(image[rows]), dim=1)
                mean = torch.where(uncovered, fallback_probs.detach().to(mean.dtype), mean)
            return sharpen(mean, temperature)
    finally:
        module.train(was_training)
