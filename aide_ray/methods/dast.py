"""DAST: divergence-aware selective training of a clean and a noisy branch.

The clean branch learns from the high-quality labels, the noisy branch from
the low-quality ones. A noisiness score per low-quality sample, the clean
branch's cross-entropy damped where the two branches diverge, ranks the
sample among the recent ones: the most noisy lose their label (the branches
are only asked to agree there), the least noisy get a refined label that
also trains the clean branch. The score and the ranking are pure functions
here so that tests can check them by hand.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.nn.losses import segmentation_loss_per_sample, sharpen
from aide_ray.nn.model_config import ModelConfig
from aide_ray.options import Section, fail

__all__ = [
    "Dast",
    "DastOptions",
    "divergence_map",
    "dual_branch_consistency_per_sample",
    "noisiness_score",
    "rank_noisy_rows",
    "refined_label",
]

_EPS = 1e-16  # inside the logs of the divergences, as PyMIC


@dataclass(frozen=True)
class DastOptions(Section):
    _prefix: ClassVar[str] = "dast"
    divergence_scale: float = 16.0  # gamma in exp(-gamma * D) weighting each pixel's CE in the score
    severe_ratio: float = 0.2  # share of the recent scores at the top: severely noisy, label dropped
    slight_ratio: float = 0.2  # share at the bottom: slightly noisy, refined label also trains the clean branch
    queue_length: int = 100  # how many recent low-quality samples' scores a score is ranked among
    consistency_weight: float = 0.1  # weight of the dual-branch consistency on severely noisy rows
    supplement_weight: float = 0.1  # weight of the clean branch's loss on refined slightly noisy rows
    temperature: float = 0.5  # sharpening of the refined label (T < 1 sharpens)
    ramp_epochs: int = 20  # sigmoid ramp-up of both weights (0: full weight from the start)

    def __post_init__(self) -> None:
        self._in_range("divergence_scale", 0.0, None)
        self._in_range("severe_ratio", 0.0, 1.0)
        self._in_range("slight_ratio", 0.0, 1.0)
        if self.severe_ratio + self.slight_ratio > 1.0:
            fail(self._key("slight_ratio"), f"<= 1 - dast.severe_ratio = {1.0 - self.severe_ratio:g}",
                 self.slight_ratio)
        self._in_range("queue_length", 1, None)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("supplement_weight", 0.0, None)
        self._in_range("temperature", 0.0, None, lo_open=True)
        self._in_range("ramp_epochs", 0, None)


def divergence_map(p: Tensor, q: Tensor) -> Tensor:
    """Symmetric KL divergence per pixel, ``(KL(p || q) + KL(q || p)) / 2`` over dim 1.

    Args:
        p, q: (B, C, H, W) probabilities.
    Returns:
        (B, H, W) float, >= 0, 0 where the two agree.
    """
    log_p, log_q = torch.log(p + _EPS), torch.log(q + _EPS)
    return 0.5 * ((p * (log_p - log_q)).sum(dim=1) + (q * (log_q - log_p)).sum(dim=1))


@torch.no_grad()
def noisiness_score(logits_clean: Tensor, logits_noisy: Tensor, target: Tensor, scale: float) -> Tensor:
    """DAST's divergence-aware noisiness of each sample's label.

    ``mean_pixels CE(p_clean, y) * exp(-scale * D(p_clean, p_noisy))``: the
    clean branch (never trained on these labels) says how wrong the label
    looks, and pixels where the two branches diverge, whose clean prediction
    is itself uncertain, count less.

    Args:
        logits_clean, logits_noisy: (B, C, H, W) the two branches' logits.
        target: (B, H, W) int64 the (low-quality) labels.
        scale: gamma >= 0; 0 gives the plain mean CE of the clean branch.
    Returns:
        (B,) float, no gradient.
    """
    ce = F.cross_entropy(logits_clean.float(), target, reduction="none")
    div = divergence_map(torch.softmax(logits_clean.float(), 1), torch.softmax(logits_noisy.float(), 1))
    return (ce * torch.exp(-scale * div)).mean(dim=(1, 2))


def rank_noisy_rows(scores: Tensor, history: Tensor, severe_ratio: float,
                    slight_ratio: float) -> tuple[Tensor, Tensor]:
    """Severely and slightly noisy rows by the rank of their score among the M recent scores.

    Severe: fewer than ``severe_ratio * M`` of ``history`` lie strictly above
    the score (it is among the top ``severe_ratio``); slight: fewer than
    ``slight_ratio * M`` lie strictly below it (the bottom); never both
    (severe wins a tie).

    Args:
        scores: (N,) this batch's noisiness scores.
        history: (M,) recent scores, this batch's included.
        severe_ratio, slight_ratio: in [0, 1]; 0 selects none.
    Returns:
        ``(severe, slight)``, two (N,) bool.
    """
    m = history.numel()
    above = (history.view(1, -1) > scores.view(-1, 1)).sum(dim=1)
    below = (history.view(1, -1) < scores.view(-1, 1)).sum(dim=1)
    severe = above < severe_ratio * m
    slight = (below < slight_ratio * m) & ~severe
    return severe, slight


def refined_label(logits_clean: Tensor, logits_noisy: Tensor, target: Tensor, temperature: float) -> Tensor:
    """The refined label of a slightly noisy sample: sharpen(mean of three one-hot votes).

    The votes are the two branches' argmax and the given label, so a pixel
    gets 1/3, 2/3 or 1 per class before sharpening (T = 0.5, C = 2: 0.2, 0.8, 1).

    Args:
        logits_clean, logits_noisy: (B, C, H, W).
        target: (B, H, W) int64.
        temperature: T > 0 of :func:`aide_ray.nn.losses.sharpen`.
    Returns:
        (B, C, H, W) detached probabilities.
    """
    c = logits_clean.shape[1]
    votes = sum(F.one_hot(t, c).movedim(-1, 1).float()
                for t in (logits_clean.detach().argmax(1), logits_noisy.detach().argmax(1), target))
    return sharpen(votes / 3.0, temperature)


def dual_branch_consistency_per_sample(p_clean: Tensor, p_noisy: Tensor) -> Tensor:
    """``(KL(sg p_clean || p_noisy) + KL(sg p_noisy || p_clean)) / 2``, pixel mean per sample.

    Each branch is pulled towards the other's detached prediction, so both get a gradient.

    Args:
        p_clean, p_noisy: (B, C, H, W) probabilities.
    Returns:
        (B,) float.
    """
    pc, pn = p_clean.detach(), p_noisy.detach()
    kl_noisy = (pc * (torch.log(pc + _EPS) - torch.log(p_noisy + _EPS))).sum(dim=1)
    kl_clean = (pn * (torch.log(pn + _EPS) - torch.log(p_clean + _EPS))).sum(dim=1)
    return (0.5 * (kl_noisy + kl_clean)).mean(dim=(1, 2))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # An empty mask gives a differentiable 0 (both nets stay in the graph).
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


class Dast(Method):
    """Divergence-aware selective training with a clean and a noisy branch.

    Reference: S. Yang, G. Wang, H. Sun, X. Luo, P. Sun, K. Li, Q. Wang,
    S. Zhang, "Learning COVID-19 pneumonia lesion segmentation from imperfect
    annotations via divergence-aware selective training", IEEE JBHI 26(8), 2022.

    Rows: clean = labelled & hq, noisy = labelled & ~hq. Per batch, with the
    ramp ``w = sigmoid_rampup(epoch, dast.ramp_epochs)``:

        s_i     = mean_pixels CE(p_clean, y) exp(-gamma D(p_clean, p_noisy))          noisy rows
        H       = the last M = ``queue_length`` scores of noisy rows (s_i among them)
        severe  = |{h in H : h > s_i}| < severe_ratio M,   slight = |{h in H : h < s_i}| < slight_ratio M
        loss    = mean_clean L_seg(clean) + mean_{noisy, not severe} L_seg(noisy)
                + w * consistency_weight * mean_severe [KL(sg p_c || p_n) + KL(sg p_n || p_c)] / 2
                + w * supplement_weight * mean_slight mean_{c,pixels} |p_c - r|
        r       = sharpen((onehot(argmax p_c) + onehot(argmax p_n) + onehot(y)) / 3, T)

    D is the symmetric KL of PyMIC's ``ConsistLoss`` (which it calls
    ``js_distance``). Until ``queue_length`` scores have been seen (per
    worker; the queue is not checkpointed, a resumed run refills it) no row is
    ranked, and every noisy row is supervised. The clean branch is the
    evaluated net.

    Where this follows the paper rather than PyMIC (``NLLDAST``,
    ``pymic/net_run/noisy_label/nll_dast.py``): PyMIC decides per *batch*
    (the batch-mean score ranked in a queue of 20 batch means), supervises the
    noisy branch on every noisy label, and only *adds* the consistency term;
    we rank every sample and drop the labels of the severely noisy ones, whose
    only training signal is then the branches' consistency, as the paper's
    selective training. PyMIC ranks severity by the noisy branch's weighted CE
    and slightness by the clean branch's, and applies either only when the
    clean branch's is the smaller of the two; we use the one score (the clean
    branch's) for both. While PyMIC's queue fills, its rank is -1, which counts
    as slightly noisy; ours ranks nothing until the queue is full. PyMIC
    averages the two supervised losses (``/ 2``), draws clean and noisy rows
    from two loaders (every batch has both; ours mix as the data do), ramps
    over iterations, and uses a dual-decoder net
    with a shared encoder (``UNet2D_DualBranch``, averaging the branches at
    inference by default); ours are two separate U-Nets and the clean branch
    is evaluated. The refined label, its L1 loss, gamma = 16, T = 0.5 and the
    weights 0.1 are PyMIC's.
    """

    Options: ClassVar[type] = DastOptions

    name: ClassVar[str] = "dast"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels
    net_names: ClassVar[tuple[str, ...]] = ("clean", "noisy")
    trained_nets: ClassVar[tuple[str, ...]] = ("clean", "noisy")
    eval_nets: ClassVar[tuple[str, ...]] = ("clean",)
    label_slots: ClassVar[int] = 1

    def __init__(self, options: DastOptions, model: ModelConfig, in_channels: int) -> None:
        super().__init__(options, model, in_channels)
        # This worker's recent noisiness scores (not checkpointed: a resumed run refills it).
        self.history: deque[float] = deque(maxlen=self.options.queue_length)

    @classmethod
    def grace_epochs(cls, options: DastOptions) -> int:
        """The ramp of the selective terms, then one epoch at full weight."""
        return options.ramp_epochs + 1

    def _classify(self, scores: Tensor, noisy: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) bool severe and slight rows; scores of the noisy rows enter the queue first."""
        self.history.extend(scores[noisy].tolist())
        none = torch.zeros_like(noisy)
        if len(self.history) < self.options.queue_length or not bool(noisy.any()):
            return none, none
        history = torch.tensor(list(self.history), dtype=scores.dtype, device=scores.device)
        severe, slight = rank_noisy_rows(scores, history, self.options.severe_ratio, self.options.slight_ratio)
        return severe & noisy, slight & noisy

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        logits_c = nets["clean"](batch.image)
        logits_n = nets["noisy"](batch.image)
        target = batch.labels[:, 0]
        labelled = batch.labelled.bool()
        clean_rows, noisy_rows = labelled & batch.hq.bool(), labelled & ~batch.hq.bool()
        scores = noisiness_score(logits_c, logits_n, target, cfg.divergence_scale)
        severe, slight = self._classify(scores, noisy_rows)
        ramp = sigmoid_rampup(epoch, cfg.ramp_epochs)

        sup_clean = _masked_mean(segmentation_loss_per_sample(logits_c, target), clean_rows)
        sup_noisy = _masked_mean(segmentation_loss_per_sample(logits_n, target), noisy_rows & ~severe)
        p_c, p_n = torch.softmax(logits_c, 1), torch.softmax(logits_n, 1)
        dbc = _masked_mean(dual_branch_consistency_per_sample(p_c, p_n), severe)
        refined = refined_label(logits_c, logits_n, target, cfg.temperature)
        st = _masked_mean((p_c - refined).abs().mean(dim=(1, 2, 3)), slight)
        loss = sup_clean + sup_noisy + ramp * (cfg.consistency_weight * dbc + cfg.supplement_weight * st)

        n_noisy = max(int(noisy_rows.sum()), 1)
        metrics = {
            "loss_clean": float(sup_clean.detach()),
            "loss_noisy": float(sup_noisy.detach()),
            "loss_consistency": float(dbc.detach()),
            "loss_supplement": float(st.detach()),
            "ramp": ramp,
            "noisiness": float(_masked_mean(scores, noisy_rows)),
            "severe_share": float(severe.sum()) / n_noisy,
            "slight_share": float(slight.sum()) / n_noisy,
        }
        return StepOutput(loss, metrics)
