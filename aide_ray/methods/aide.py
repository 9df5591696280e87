"""AIDE: its options, its training step and the label-correction plan it hands the engine.

The step (twin nets, crossed small-loss selection, consistency with the twin's
sharpened pseudo-labels) is plain PyTorch here; the epoch-end global label
correction is decided here (:meth:`Aide.correction_plan`) and carried out by
the engine with the rules of :mod:`aide_ray.methods.correction`.
docs/algorithm.md gives the formulas and every difference from the paper and
the reference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, CorrectionPlan, Method, Phase, StepOutput
from aide_ray.methods.correction import should_update
from aide_ray.nn.augment import augmented_pseudo_label, default_rows_per_pass
from aide_ray.nn.losses import consistency_loss_per_sample, segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["AideOptions", "Aide", "aide_losses", "ramp_weight", "small_loss_selection", "aide_net_loss", "twin_of",
           "flip_view", "crossed_selection", "segmentation_losses", "pseudo_rows", "net_losses"]


@dataclass(frozen=True)
class AideOptions(Section):
    """AIDE hyperparameters; defaults follow the reference code (see docs/algorithm.md)."""

    _prefix: ClassVar[str] = "aide"
    update_ratio: float = 0.25  # R: share of eligible samples relabelled per update
    temperature: float = 0.5  # T: sharpening of the averaged pseudo-label, T < 1 sharpens
    warmup_epochs: int = 20  # labels are updated every epoch while epoch + 1 <= warmup_epochs
    update_every: int = 10  # ... and afterwards when (epoch + 1) % update_every == 0
    consistency_weight: float = 10.0  # lambda
    ramp_epochs: int = 20  # q_t: r = min((epoch / q_t)^2, 1)
    num_augmentations: int = 4  # K
    small_loss_fraction: float = 0.5  # share of each batch the twin deems clean
    rotation_degrees: float = 60.0  # augmentation rotations in [-theta, theta]
    pseudo_label_eval_mode: bool = True  # pseudo-label forward passes in eval mode (batch-norm running stats)
    correct_hq: bool = False  # whether HQ-labelled samples may be relabelled
    largest_component: bool = False  # keep the largest connected component of predictions used as labels
    # Two-stage recipe (the reference's pipeline in one job): the first supervised_epochs train each net
    # on the given labels alone; the AIDE stage follows with its own optimiser at optim.lr * lr_factor,
    # and warmup_epochs, update_every and ramp_epochs count from its start. 0: AIDE from the first epoch.
    supervised_epochs: int = 0
    lr_factor: float = 1.0
    twin_flips: bool = False  # each net trains on its own random flips of the batch (twins that differ)
    correct_where_agree: bool = False  # a correction writes only the pixels where both nets agree
    max_corrected_share: float = 1.0  # corrections stop at this share of the eligible labels per net
    # Ablation switches (docs/results.md): each removes one of AIDE's parts.
    correct_labels: bool = True  # false: no global label correction
    crossed_selection: bool = True  # false: each net picks its own small-loss rows instead of its twin's
    identical_twins: bool = False  # true: both nets start from the same weights

    def __post_init__(self) -> None:
        self._in_range("update_ratio", 0.0, 1.0, lo_open=True)
        self._in_range("temperature", 0.0, None, lo_open=True)
        self._in_range("warmup_epochs", 0, None)
        self._in_range("update_every", 1, None)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 1, None)
        self._in_range("num_augmentations", 1, 64)
        self._in_range("small_loss_fraction", 0.0, 1.0, lo_open=True)
        self._in_range("rotation_degrees", 0.0, 180.0)
        self._in_range("supervised_epochs", 0, None)
        self._in_range("lr_factor", 0.0, None, lo_open=True)
        self._in_range("max_corrected_share", 0.0, 1.0)


def ramp_weight(epoch: int, ramp_epochs: int) -> float:
    """r = min((epoch / q_t)^2, 1) for the 0-based ``epoch`` (reference ``rate_schedule``)."""
    if ramp_epochs < 1:
        raise ValueError(f"ramp_epochs must be >= 1, got {ramp_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return min((epoch / ramp_epochs) ** 2, 1.0)


def small_loss_selection(ranking_loss: Tensor, fraction: float, candidates: Tensor) -> Tensor:
    """The rows a twin deems clean: the ``fraction`` of candidate rows with the smallest loss.

    Args:
        ranking_loss: (B,) per-sample loss of the *twin* net on its own labels.
        fraction: share of the candidates to select, in (0, 1].
        candidates: (B,) bool, rows that may be selected (the labelled rows).

    Returns:
        (B,) bool, exactly ``max(1, floor(fraction * n + 0.5))`` candidates (none
        when n = 0), smallest loss first, ties broken by row index.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = int(candidates.sum())
    selected = torch.zeros_like(candidates, dtype=torch.bool)
    if n == 0:
        return selected
    k = min(n, max(1, math.floor(fraction * n + 0.5)))
    # Non-candidates sort last; a stable sort keeps index order among equal losses.
    key = torch.where(candidates, ranking_loss.detach().float(), torch.full_like(ranking_loss, math.inf,
                                                                                dtype=torch.float32))
    order = torch.sort(key, stable=True).indices
    selected[order[:k]] = True
    return selected


def aide_net_loss(seg: Tensor, con: Tensor | None, selected: Tensor, labelled: Tensor, ramp: float,
                  consistency_weight: float) -> Tensor:
    """One net's AIDE loss from its per-sample losses.

    ``mean_{selected} L_seg + mean_{rest} [(1 - r_i) L_seg + lambda * r_i * L_con]``
    with r_i = ``ramp`` for labelled rows and r_i = 1 for unlabelled rows (pure
    consistency). The two means are taken separately, as in the reference code
    (``loss1_seg1 + (1 - r) * loss1_seg2 + lambda * r * loss1_cor``); an empty
    group contributes 0.

    Args:
        seg: (B,) L_seg of the net on its current labels.
        con: (B,) L_con against the twin's pseudo-label, or None when no row needs it.
        selected: (B,) bool, rows the twin picked as small-loss (labelled only).
        labelled: (B,) bool.
        ramp: r in [0, 1].
        consistency_weight: lambda.

    Returns:
        Scalar loss.
    """
    rest = ~selected
    r = torch.where(labelled, torch.full_like(seg, ramp), torch.ones_like(seg))
    row = torch.where(selected, seg, (1.0 - r) * torch.where(labelled, seg, torch.zeros_like(seg)))
    if con is not None:
        row = row + torch.where(rest, consistency_weight * r * con, torch.zeros_like(con))
    n_sel = selected.sum().clamp_min(1)
    n_rest = rest.sum().clamp_min(1)
    return torch.where(selected, row, 0.0).sum() / n_sel + torch.where(rest, row, 0.0).sum() / n_rest


def flip_view(x: Tensor, flip_h: Tensor, flip_v: Tensor) -> Tensor:
    """Rows of ``x`` (B, ..., H, W) mirrored left-right where ``flip_h`` and up-down where ``flip_v`` ((B,) bool).

    Its own inverse (the two flips commute), and differentiable: a net's logits on
    its view are brought back to the batch's frame by the same call.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = torch.where(flip_h.view(shape), x.flip(-1), x)
    return torch.where(flip_v.view(shape), x.flip(-2), x)


def twin_of(name: str, net_names: tuple[str, str]) -> str:
    """The other net of the pair."""
    a, b = net_names
    if name not in net_names:
        raise ValueError(f"net name must be one of {net_names}, got {name!r}")
    return b if name == a else a


def crossed_selection(seg: Mapping[str, Tensor], labelled: Tensor, small_loss_fraction: float,
                      net_names: tuple[str, str] = ("net1", "net2"), crossed: bool = True) -> dict[str, Tensor]:
    """The rows each net trains on with plain L_seg: the small-loss share of its twin's ranking (or its own).

    Args:
        seg: net name -> (B,) per-sample L_seg of that net on its own label slot.
        labelled: (B,) bool; only labelled rows can be selected.
        small_loss_fraction: share of the labelled rows selected.
        net_names: the pair.
        crossed: the twin's loss ranks a net's rows (AIDE); False: the net's own (ablation).

    Returns:
        net name -> (B,) bool.
    """
    return {name: small_loss_selection(seg[twin_of(name, net_names) if crossed else name].detach(),
                                       small_loss_fraction, labelled)
            for name in net_names}


def aide_losses(
    logits: Mapping[str, Tensor],
    labels: Tensor,
    labelled: Tensor,
    pseudo: Mapping[str, Tensor] | None,
    *,
    ramp: float,
    consistency_weight: float,
    small_loss_fraction: float,
    net_names: tuple[str, str] = ("net1", "net2"),
    crossed: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """AIDE's per-net losses for one batch, given the nets' logits and pseudo-labels (pure function).

    For each (net, twin): the twin's per-sample L_seg on the twin's labels picks
    the small-loss rows that train ``net`` with plain L_seg (crossed selection);
    on the other rows ``net`` gets ``(1 - r) L_seg + lambda r L_con`` against the
    twin's sharpened pseudo-label (``aide_net_loss``).

    Args:
        logits: net name -> (B, C, H, W) logits of the training forward pass.
        labels: (B, 2, H, W) int64 current labels; slot i belongs to ``net_names[i]``.
        labelled: (B,) bool.
        pseudo: net name -> (B, C, H, W) that net's sharpened pseudo-label; None
            when the consistency term has zero weight on every row. Only the rows
            its twin did not select are read (``pseudo_rows``).
        ramp: r in [0, 1].
        consistency_weight: lambda.
        small_loss_fraction: share of the labelled rows each twin selects.
        net_names: the pair, in label-slot order.
        crossed: the twin's loss picks a net's small-loss rows (AIDE); False: the net's own (ablation).

    Returns:
        losses: net name -> scalar loss.
        selected: net name -> (B,) bool, the rows selected (by the twin) for that net.
    """
    seg = segmentation_losses(logits, labels, net_names)
    selected = crossed_selection(seg, labelled, small_loss_fraction, net_names, crossed)
    return net_losses(logits, seg, selected, labelled, pseudo, ramp=ramp, consistency_weight=consistency_weight,
                      net_names=net_names), selected


def segmentation_losses(logits: Mapping[str, Tensor], labels: Tensor,
                        net_names: tuple[str, str] = ("net1", "net2")) -> dict[str, Tensor]:
    """net name -> (B,) L_seg of that net's logits on its own label slot of ``labels`` (B, 2, H, W)."""
    if labels.dim() != 4 or labels.shape[1] != 2:
        raise ValueError(f"labels must have shape (B, 2, H, W), got {tuple(labels.shape)}")
    return {name: segmentation_loss_per_sample(logits[name], labels[:, slot]) for slot, name in enumerate(net_names)}


def pseudo_rows(selected: Mapping[str, Tensor], net_names: tuple[str, str] = ("net1", "net2")) -> dict[str, Tensor]:
    """net name -> (B,) bool, the rows on which that net's pseudo-label is read: those its twin was not given.

    A net's pseudo-label is the consistency target of its twin's *rest* rows only
    (``aide_net_loss`` masks the selected ones out), so its K views need not be
    computed for the rows the twin trains on with plain L_seg.
    """
    return {name: ~selected[twin_of(name, net_names)] for name in net_names}


def net_losses(logits: Mapping[str, Tensor], seg: Mapping[str, Tensor], selected: Mapping[str, Tensor],
               labelled: Tensor, pseudo: Mapping[str, Tensor] | None, *, ramp: float, consistency_weight: float,
               net_names: tuple[str, str] = ("net1", "net2")) -> dict[str, Tensor]:
    """net name -> scalar ``aide_net_loss``, its consistency term against the twin's pseudo-label."""
    losses = {}
    for name in net_names:
        con = None
        if pseudo is not None:
            con = consistency_loss_per_sample(torch.softmax(logits[name], dim=1), pseudo[twin_of(name, net_names)])
        losses[name] = aide_net_loss(seg[name], con, selected[name], labelled, ramp, consistency_weight)
    return losses


class Aide(Method):
    """AIDE: Annotation-effIcient Deep lEarning with twin cross-correcting U-Nets.

    Wang, S., Li, C., et al. "Annotation-efficient deep learning for automatic
    medical image segmentation." Nature Communications 12, 5915 (2021),
    Algorithm 1; reference code github.com/lich0031/AIDE.

    Per batch (:meth:`train_step`): each net's per-sample L_seg on its own
    current labels ranks the batch for its *twin* (crossed small-loss
    selection); the selected rows train with L_seg, the others with
    ``(1 - r) L_seg + lambda r L_con`` against the twin's pseudo-label (mean
    softmax over K rotated/flipped views, sharpened), r ramping as
    ``min((epoch / q_t)^2, 1)``. Rows without a label (``batch.labelled``
    False) are never selected and use r = 1: pure consistency.

    Per epoch (engines, :mod:`aide_ray.methods.correction`): the labels of the
    worst-fitting share R of the samples are replaced, crossed, by the nets'
    predictions.
    """

    Options: ClassVar[type] = AideOptions

    name = "aide"
    net_names = ("net1", "net2")
    trained_nets = ("net1", "net2")
    eval_nets = ("net1", "net2")
    label_slots = 2
    uses_unlabelled = True

    def build_nets(self) -> dict[str, nn.Module]:
        """Two U-Nets from their own random initialisation (or, as an ablation, the same one)."""
        nets = super().build_nets()
        if self.options.identical_twins:
            nets["net2"].load_state_dict(nets["net1"].state_dict())
        return nets

    def _logits(self, net: nn.Module, image: Tensor) -> Tensor:
        """The net's logits in the batch's frame; with ``twin_flips`` computed on its own random view."""
        if not self.options.twin_flips:
            return net(image)
        b = image.shape[0]
        flip_h = torch.rand(b, device=image.device) < 0.5
        flip_v = torch.rand(b, device=image.device) < 0.5
        return flip_view(net(flip_view(image, flip_h, flip_v)), flip_h, flip_v)

    def _supervised_step(self, nets: dict[str, nn.Module], batch: Batch) -> StepOutput:
        """The first stage: each net learns its own label slot with L_seg on the labelled rows."""
        labelled = batch.labelled.to(torch.float32)
        losses = {}
        for slot, name in enumerate(self.net_names):
            seg = segmentation_loss_per_sample(self._logits(nets[name], batch.image), batch.labels[:, slot])
            losses[name] = (seg * labelled).sum() / labelled.sum().clamp_min(1.0)
        metrics = {f"loss_{name}": float(loss.detach()) for name, loss in losses.items()}
        return StepOutput(loss=sum(losses.values()), metrics=metrics)

    def _pseudo_label(self, net: nn.Module, image: Tensor, logits: Tensor, rows: Tensor) -> Tensor:
        """The net's sharpened pseudo-label (B, C, H, W), its K views computed on ``rows`` only.

        The other rows hold the net's own softmax and are never read (``pseudo_rows``):
        with half the batch selected this halves the K x B no-grad passes. In eval mode
        (the default) rows are independent, so the rows computed are what a pass over
        the whole batch would give them; with ``pseudo_label_eval_mode`` false their
        batch statistics come from the rows computed.
        """
        cfg = self.options
        # float32 like the views' result, also under bf16 autocast (the logits' dtype there).
        probs = torch.softmax(logits.detach().float(), dim=1)
        if not bool(rows.any()):
            return probs
        out = probs.clone()
        out[rows] = augmented_pseudo_label(
            net, image[rows], cfg.num_augmentations, cfg.rotation_degrees, cfg.temperature,
            eval_mode=cfg.pseudo_label_eval_mode, fallback_probs=probs[rows],
            rows_per_pass=default_rows_per_pass(image),
        )
        return out

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        if epoch < cfg.supervised_epochs:
            return self._supervised_step(nets, batch)
        names: tuple[str, str] = self.net_names  # type: ignore[assignment]
        ramp = ramp_weight(epoch - cfg.supervised_epochs, cfg.ramp_epochs)
        logits = {name: self._logits(nets[name], batch.image) for name in names}
        labelled = batch.labelled.bool()
        seg = segmentation_losses(logits, batch.labels, names)
        selected = crossed_selection(seg, labelled, cfg.small_loss_fraction, names, cfg.crossed_selection)
        # The consistency term weighs lambda * r_i; at epoch 0 with every row
        # labelled it is zero everywhere, so the K x B forward passes are skipped.
        needs_pseudo = cfg.consistency_weight > 0 and (ramp > 0 or not bool(labelled.all()))
        pseudo = None
        if needs_pseudo:
            rows = pseudo_rows(selected, names)
            pseudo = {name: self._pseudo_label(nets[name], batch.image, logits[name], rows[name]) for name in names}
        losses = net_losses(logits, seg, selected, labelled, pseudo, ramp=ramp,
                            consistency_weight=cfg.consistency_weight, net_names=names)
        metrics = {f"loss_{name}": float(losses[name].detach()) for name in names}
        metrics["ramp"] = ramp
        metrics["selected_fraction"] = float(selected[names[0]].float().mean())
        return StepOutput(loss=losses[names[0]] + losses[names[1]], metrics=metrics)

    @classmethod
    def grace_epochs(cls, options: AideOptions) -> int:
        """The supervised stage and the warm-up, then one epoch trained on the labels the warm-up left."""
        return options.supervised_epochs + options.warmup_epochs + 1

    def phase(self, epoch: int) -> Phase:
        """Phase 0: the supervised stage (if any); phase 1: AIDE at ``optim.lr * lr_factor``."""
        start = self.options.supervised_epochs
        if start == 0:
            return Phase()
        return Phase() if epoch < start else Phase(index=1, start_epoch=start, lr_factor=self.options.lr_factor)

    def correction_plan(self, epoch: int) -> CorrectionPlan | None:
        """Crossed relabelling of the worst-fitting share R after the warm-up/every-N epochs of the AIDE stage."""
        opts = self.options
        stage_epoch = epoch - opts.supervised_epochs
        if not opts.correct_labels or stage_epoch < 0 or \
                not should_update(stage_epoch, opts.warmup_epochs, opts.update_every):
            return None
        return CorrectionPlan(ratio=opts.update_ratio, targets=(1, 0), correct_hq=opts.correct_hq,
                              largest_component=opts.largest_component, where_agree=opts.correct_where_agree,
                              max_share=opts.max_corrected_share)
