"""Global label correction as pure decisions: the plan a method hands the engine, and its rules.

After an update epoch every labelled, correctable sample is scored by each net
(Dice of its hard prediction against that net's current label); the worst
share R of the eligible samples per net get a new label, and the update is
crossed: the samples net1 fits worst receive net1's prediction as *net2's*
label, and vice versa (reference code: net1's predictions are written to the
``_net1`` mask files, which the dataset feeds to net2). A method says what to
do in a :class:`CorrectionPlan`; the engine owns the label store and carries
the plan out with the rules below. Nothing here runs a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage
from torch import Tensor

from aide_ray.data.label_kinds import HQ, LQ, SCRIBBLE

__all__ = [
    "CorrectionPlan",
    "should_update",
    "largest_component_per_class",
    "eligible_mask",
    "correction_count",
    "has_foreground",
]


@dataclass(frozen=True)
class CorrectionPlan:
    """What the engine does to the labels after one epoch, as decided by the method.

    Attributes:
        ratio: R, the share of the eligible samples each scoring slot relabels.
        targets: ``targets[s]`` is the label slot that receives the predictions
            of the net that scores slot ``s`` (AIDE: crossed, ``(1, 0)``).
        correct_hq: whether samples with a high-quality source label are eligible.
        largest_component: keep only the largest connected component per class
            of a prediction before it becomes a label (reference CHAOS/prostate).
        where_agree: a new label takes the prediction only on the pixels where
            every slot's net predicts the same class, and keeps the target slot's
            current label elsewhere: one net's mistake is never written.
        max_share: corrections stop once this share of the eligible samples of a
            slot carries a corrected label (1.0: no cap).
    """

    ratio: float
    targets: tuple[int, ...]
    correct_hq: bool = False
    largest_component: bool = False
    where_agree: bool = False
    max_share: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        n = len(self.targets)
        if n == 0 or any(not 0 <= t < n for t in self.targets):
            raise ValueError(f"targets must name label slots in [0, {n}), got {self.targets}")
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"max_share must be in [0, 1], got {self.max_share}")

    def eligible(self, labelled: Tensor | np.ndarray, hq: Tensor | np.ndarray) -> np.ndarray:
        """(N,) bool: the rows this plan may relabel."""
        return eligible_mask(labelled, hq, self.correct_hq)

    def eligible_count(self, kind_counts: Mapping[str, int]) -> int:
        """Eligible training samples, from the rows per label kind (``dataset.json``'s counts of the split).

        Scribble rows are never HQ, so they are eligible like LQ rows: a correction turns a
        partial label into a full one.
        """
        correctable = int(kind_counts.get(LQ, 0)) + int(kind_counts.get(SCRIBBLE, 0))
        return correctable + (int(kind_counts.get(HQ, 0)) if self.correct_hq else 0)

    def count(self, n_eligible: int, already_corrected: int = 0) -> int:
        """k, the samples a scoring slot relabels: ``correction_count(ratio, n_eligible)``, less what
        would take the target slot past ``max_share`` of the eligible samples (``already_corrected``
        of them carry a corrected label)."""
        k = correction_count(self.ratio, n_eligible)
        room = math.floor(self.max_share * n_eligible + 1e-9) - already_corrected
        return max(0, min(k, room))

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

