"""Entropy minimisation on scribbles: pCE where annotated, confident predictions everywhere.

The semi-supervised ``entmin`` pushes unlabelled *rows* towards confident
predictions; with scribbles every row has a label but most of its pixels do
not, so the same entropy (:func:`aide_ray.methods.entmin.entropy_map`) covers
every pixel of every row. Its own method because the rows it reads and the
supervised term (pCE instead of L_seg) differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from aide_ray.methods.entmin import entropy_map
from aide_ray.methods.pce import RegularisedPce, RegularisedPceOptions

__all__ = ["ScribbleEntMinOptions", "ScribbleEntMin"]


@dataclass(frozen=True)
class ScribbleEntMinOptions(RegularisedPceOptions):
    _prefix: ClassVar[str] = "scribble_entmin"


class ScribbleEntMin(RegularisedPce):
    """pCE plus the ramped mean pixel entropy of the softmax over every pixel.

    ``loss = pCE + w(epoch) * mean_{rows, pixels} H(softmax(net(x)))``, ``H(p) = -sum_c p_c ln p_c``
    (nats), ``w(epoch) = scribble_entmin.weight * sigmoid_rampup(epoch, scribble_entmin.ramp_epochs)``.

    PyMIC: ``WSLEntropyMinimization`` (``pymic/net_run/weak_sup/wsl_em.py``, loss ``EntropyLoss``
    in ``pymic/loss/seg/ssl.py``), the same term over every pixel, but it smooths ``p`` to
    ``0.999 p + 5e-4`` and divides by ``ln C`` (a rescaled weight); we take the paper's plain
    entropy. It ramps over iterations, we over epochs.

    Reference: Y. Grandvalet and Y. Bengio, "Semi-supervised learning by entropy
    minimization", NIPS 2005.
    """

    Options: ClassVar[type] = ScribbleEntMinOptions

    name: ClassVar[str] = "scribble_entmin"

    def regulariser(self, logits: Tensor, image: Tensor) -> Tensor:
        return entropy_map(logits).mean()
