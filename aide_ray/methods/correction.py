"""AIDE's epoch-end global label correction, as pure decisions the engines carry out.

After an update epoch every labelled, correctable sample is scored by each net
(Dice of its hard prediction against that net's current label); the worst
share R of the eligible samples per net get a new label, and the update is
crossed: the samples net1 fits worst receive net1's prediction as *net2's*
label, and vice versa (reference code: net1's predictions are written to the
``_net1`` mask files, which the dataset feeds to net2). The engines own the
label store; this module only computes scores, predictions and selections.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from aide_ray.methods.base import unwrap

__all__ = [
    "should_update",
    "dice_per_sample",
    "hard_prediction",
    "largest_component_per_class",
    "eligible_mask",
    "correction_count",
    "select_for_correction",
    "has_foreground",
    "target_slot",
]


def should_update(epoch: int, warmup: int, every: int) -> bool:
    """Whether labels are corrected after the 0-based ``epoch``.

    True when ``epoch + 1 <= warmup`` (every epoch of the warm-up) or
    ``(epoch + 1) % every == 0``, the reference code's rule
    ``(epoch + 1) <= warmup_epoch or (epoch + 1) % 10 == 0``. With warmup 20 and
    every 10: epochs 0..19, then 29, 39, ...
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return epoch + 1 <= warmup or (epoch + 1) % every == 0


def dice_per_sample(pred: Tensor | np.ndarray, label: Tensor | np.ndarray,
                    num_classes: int | None = None) -> Tensor | np.ndarray:
    """Hard Dice of each sample's prediction against its label.

    With ``num_classes`` None (or 2): the foreground Dice, foreground being any
    class > 0. With ``num_classes`` > 2: the mean over classes 1..C-1 of the
    per-class Dice. When prediction and label are both empty (for a class) the
    score is 1.0: an empty prediction of an empty label is perfect, and scoring
    it 0 (as the reference ``Dice2d`` does) would rank correctly-empty slices as
    the worst and hand them to the correction first.

    Args:
        pred: (B, H, W) int or bool class map.
        label: (B, H, W) int or bool class map.
        num_classes: C including the background, or None for binary foreground.

    Returns:
        (B,) scores in [0, 1]: a float32 Tensor on ``pred``'s device when ``pred``
        is a Tensor, else a float64 numpy array.
    """
    as_numpy = not isinstance(pred, Tensor)
    p = torch.as_tensor(np.asarray(pred)) if as_numpy else pred
    y = torch.as_tensor(np.asarray(label)) if not isinstance(label, Tensor) else label.to(p.device)
    if p.shape != y.shape or p.dim() != 3:
        raise ValueError(f"pred and label must both have shape (B, H, W), got {tuple(p.shape)} and {tuple(y.shape)}")
    if num_classes is None or num_classes <= 2:
        classes = [None]
    else:
        classes = list(range(1, num_classes))
    scores = []
    for c in classes:
        pc = (p > 0) if c is None else (p == c)
        yc = (y > 0) if c is None else (y == c)
        inter = (pc & yc).flatten(1).sum(1).double()
        denom = (pc.flatten(1).sum(1) + yc.flatten(1).sum(1)).double()
        scores.append(torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1.0), torch.ones_like(denom)))
    out = torch.stack(scores).mean(dim=0)
    return out.numpy() if as_numpy else out.float()


def largest_component_per_class(pred: np.ndarray) -> np.ndarray:
    """Keep, per foreground class, only its largest 4-connected component; (B, H, W) -> same, uint8."""
    out = np.zeros_like(pred, dtype=np.uint8)
    for b in range(pred.shape[0]):
        for c in np.unique(pred[b]):
            if c == 0:
                continue
            comps, n = ndimage.label(pred[b] == c)
            if n == 0:
                continue
            sizes = np.bincount(comps.ravel())[1:]
            out[b][comps == int(np.argmax(sizes)) + 1] = c
    return out


def hard_prediction(net: nn.Module, image: Tensor, largest_component: bool = False) -> Tensor:
    """Argmax prediction of ``net`` in eval mode without gradients (the previous mode is restored).

    Args:
        net: maps (B, M, H, W) to logits (B, C, H, W); a DDP wrapper is bypassed.
        image: (B, M, H, W) float.
        largest_component: keep only the largest connected component of each
            foreground class (scipy.ndimage.label, 4-connectivity).

    Returns:
        (B, H, W) uint8 class map on ``image``'s device.
    """
    module = unwrap(net)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            pred = module(image).argmax(dim=1).to(torch.uint8)
    finally:
        module.train(was_training)
    if largest_component:
        pred = torch.from_numpy(largest_component_per_class(pred.cpu().numpy())).to(image.device)
    return pred


def eligible_mask(labelled: Tensor | np.ndarray, hq: Tensor | np.ndarray, correct_hq: bool) -> np.ndarray:
    """(N,) bool: samples whose labels may be corrected: labelled, and not HQ unless ``correct_hq``."""
    labelled = np.asarray(labelled.cpu() if isinstance(labelled, Tensor) else labelled, dtype=bool)
    hq = np.asarray(hq.cpu() if isinstance(hq, Tensor) else hq, dtype=bool)
    if labelled.shape != hq.shape:
        raise ValueError(f"labelled and hq must have the same shape, got {labelled.shape} and {hq.shape}")
    return labelled & (~hq | correct_hq)


def correction_count(ratio: float, n_eligible: int) -> int:
    """k = floor(ratio * n_eligible + 0.5): round half up (Python's ``round`` rounds 2.5 to 2)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if n_eligible < 0:
        raise ValueError(f"n_eligible must be >= 0, got {n_eligible}")
    return math.floor(ratio * n_eligible + 0.5)


def select_for_correction(scores: np.ndarray | Tensor, ratio: float, eligible: np.ndarray | Tensor) -> np.ndarray:
    """The eligible samples whose labels are replaced: the lowest-scoring share ``ratio``.

    Exactly ``k = correction_count(ratio, n_eligible)`` samples, i.e.
    ``floor(ratio * n_eligible + 0.5)`` (round half up: R = 0.25 of 10 selects
    3 and of 2 selects 1; the reference takes ``int(R * N)`` of *all* samples
    and then skips the HQ ones, so it can relabel fewer). Lowest score first,
    ties broken by the lower index. Samples not eligible are never selected.

    Args:
        scores: (N,) Dice of each sample's prediction against its current label.
        ratio: R in (0, 1].
        eligible: (N,) bool (``eligible_mask``).

    Returns:
        (N,) bool numpy array.
    """
    scores = np.asarray(scores.cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    eligible = np.asarray(eligible.cpu() if isinstance(eligible, Tensor) else eligible, dtype=bool)
    if scores.shape != eligible.shape or scores.ndim != 1:
        raise ValueError(f"scores and eligible must both have shape (N,), got {scores.shape} and {eligible.shape}")
    if np.isnan(scores[eligible]).any():
        raise ValueError("scores of eligible samples must not be NaN")
    idx = np.flatnonzero(eligible)
    k = correction_count(ratio, idx.size)
    chosen = idx[np.argsort(scores[idx], kind="stable")[:k]]
    selected = np.zeros(scores.shape, dtype=bool)
    selected[chosen] = True
    return selected


def has_foreground(pred: np.ndarray | Tensor) -> np.ndarray:
    """(N,) bool: the prediction (N, H, W) has at least one foreground pixel.

    A selected sample's label is replaced only where this holds, as in the
    kidney and breast reference scripts (``if save_data.sum() > 0``): early in
    training a net often predicts nothing, its Dice against any non-empty label
    is 0, and writing that empty prediction would erase the label and feed the
    twin more empty targets.
    """
    arr = pred.cpu().numpy() if isinstance(pred, Tensor) else np.asarray(pred)
    return arr.reshape(arr.shape[0], -1).any(axis=1)


def target_slot(scoring_slot: int, num_slots: int = 2) -> int:
    """The label slot that receives the predictions of the net that scored with ``scoring_slot``.

    Crossed update: net1 (slot 0) scores its samples against its own label; the
    ones it selects get net1's prediction as net2's new label (slot 1), and vice
    versa. With a single slot the net relabels itself.
    """
    if not 0 <= scoring_slot < num_slots:
        raise ValueError(f"scoring_slot must be in [0, {num_slots}), got {scoring_slot}")
    return (scoring_slot + 1) % num_slots
