"""USTM (Liu et al., Pattern Recognition 2022): an uncertainty-aware, transformation-consistent mean teacher on scribbles.

The student learns pCE from the scribbles; an EMA teacher sees a transformed
(rotated, mirrored) copy of the image, and the student's prediction, moved by
the same transformation, is pulled towards the teacher's on the pixels where the
teacher is certain (UA-MT's entropy threshold). The consistency reaches every
pixel, so the unannotated ones learn from the teacher. The mean-teacher parts
(EMA, noise, uncertainty, masked consistency) are :mod:`aide_ray.methods.uamt`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import ema_update, sigmoid_rampup, student_and_teacher
from aide_ray.methods.pce import annotated_pixels, partial_cross_entropy
from aide_ray.methods.uamt import add_input_noise, masked_consistency, teacher_uncertainty, uncertainty_threshold
from aide_ray.options import Section

__all__ = ["UstmOptions", "Ustm", "square_symmetry", "draw_square_symmetries"]


@dataclass(frozen=True)
class UstmOptions(Section):
    _prefix: ClassVar[str] = "ustm"
    ema_decay: float = 0.99  # teacher = decay * teacher + (1 - decay) * student
    consistency_weight: float = 0.1  # lambda after the ramp (PyMIC's regularize_w default)
    ramp_epochs: int = 20  # sigmoid ramp of the weight and of the uncertainty threshold
    noise_std: float = 0.1  # Gaussian input noise, clipped to +-2 std (PyMIC, WSL4MIS: 0.1 clipped to 0.2)
    num_passes: int = 8  # T stochastic teacher passes for the uncertainty (PyMIC, WSL4MIS: 8)
    mirror: bool = True  # transformations: quarter turns and mirroring (false: quarter turns only, as PyMIC)

    def __post_init__(self) -> None:
        self._in_range("ema_decay", 0.0, 1.0, hi_open=True)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("noise_std", 0.0, None)
        self._in_range("num_passes", 1, 64)


def square_symmetry(x: Tensor, quarter_turns: Tensor, mirrored: Tensor) -> Tensor:
    """Each row of ``x`` (B, ..., H, W) mirrored left-right where ``mirrored`` (B,), then turned
    ``quarter_turns`` (B,) times 90 degrees counter-clockwise; differentiable.

    Odd turns swap H and W, so they need square images.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = torch.where(mirrored.view(shape).to(x.device), x.flip(-1), x)
    return torch.stack([torch.rot90(row, int(k), dims=(-2, -1)) for row, k in zip(x, quarter_turns.tolist())])


def draw_square_symmetries(batch_size: int, height: int, width: int, mirror: bool) -> tuple[Tensor, Tensor]:
    """Random ``(quarter_turns, mirrored)`` per row, from torch's global generator (on the CPU, so a
    seeded run draws the same on any device); half turns only when the image is not square."""
    turns = torch.randint(0, 4, (batch_size,)) if height == width else 2 * torch.randint(0, 2, (batch_size,))
    mirrored = torch.rand(batch_size) < 0.5 if mirror else torch.zeros(batch_size, dtype=torch.bool)
    return turns, mirrored


class Ustm(Method):
    """Student on pCE, EMA teacher on a transformed image, consistency where the teacher is certain.

    With ``t`` a random square symmetry per row (:func:`draw_square_symmetries`) and ``n, n', n_k``
    independent clipped input noises::

        mu = (1/T) sum_k softmax(teacher(t(x) + n_k))                    T = ustm.num_passes
        u  = -sum_c mu_c ln mu_c,  H = (0.75 + 0.25 r) ln C               (per pixel)
        L_c = sum_v I(u_v < H) ||t(softmax(student(x + n)))_v - softmax(teacher(t(x) + n'))_v||^2 / sum_v I(u_v < H)
        loss = pCE(student(x + n), y) + ustm.consistency_weight * r * L_c,  r = sigmoid_rampup(epoch, ustm.ramp_epochs)

    over every pixel v of every row; after every optimiser step the teacher's weights become
    the EMA of the student's (``ema_update``). The teacher is the evaluated net.

    PyMIC: ``WSLUSTM`` (``pymic/net_run/weak_sup/wsl_ustm.py``). Where it and the paper differ we
    follow the paper: PyMIC's EMA update has the out-of-place ``add`` of ``ssl_mt.py``, so its
    teacher never receives the student's weights (docs/methods.md, meanteacher); it divides
    the consistency by ``2 sum mask`` (a class mean for C = 2, from UA-MT's code) where the
    squared norm sums over the classes; it warms the decay up as ``min(1 - 1/(glob_it /
    iter_valid + 1), d)``. It draws one quarter turn per batch and never mirrors; we draw one
    of the square's eight symmetries per row, the rotations and flips of the
    transformation-consistent self-ensembling model (TCSM, Li et al., IEEE TNNLS 2020) that
    USTM's transformation consistency comes from (``ustm.mirror=false``: quarter turns
    only). WSL4MIS (Luo et al.'s benchmark code) feeds the student clean images and takes
    the threshold with ``ln 2`` whatever C.

    Reference: X. Liu, Q. Yuan, Y. Gao, K. He, S. Wang, X. Tang, J. Tang, D. Shen, "Weakly
    supervised segmentation of COVID19 infection with scribble annotation on CT images",
    Pattern Recognition 122, 108341 (2022).
    """

    Options: ClassVar[type] = UstmOptions

    name: ClassVar[str] = "ustm"
    net_names: ClassVar[tuple[str, ...]] = ("student", "teacher")
    trained_nets: ClassVar[tuple[str, ...]] = ("student",)
    eval_nets: ClassVar[tuple[str, ...]] = ("teacher",)
    label_slots: ClassVar[int] = 1

    def build_nets(self) -> dict[str, nn.Module]:
        return student_and_teacher(self.model, self.in_channels)

    def consistency_weight(self, epoch: int) -> float:
        return self.options.consistency_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        image = batch.image
        student_logits = nets["student"](add_input_noise(image, cfg.noise_std))
        sup = partial_cross_entropy(student_logits, batch.labels[:, 0], batch.labelled)
        turns, mirrored = draw_square_symmetries(image.shape[0], image.shape[-2], image.shape[-1], cfg.mirror)
        moved = square_symmetry(image, turns, mirrored)
        with torch.no_grad():
            teacher_probs = torch.softmax(nets["teacher"](add_input_noise(moved, cfg.noise_std)), dim=1)
            uncertainty = teacher_uncertainty(nets["teacher"], moved, cfg.num_passes, cfg.noise_std)
        threshold = uncertainty_threshold(epoch, cfg.ramp_epochs, self.num_classes)
        certain = uncertainty < threshold
        student_moved = square_symmetry(torch.softmax(student_logits, dim=1), turns, mirrored)
        cons = masked_consistency(student_moved, teacher_probs, certain)
        weight = self.consistency_weight(epoch)
        metrics = {"loss_pce": float(sup.detach()), "loss_cons": float(cons.detach()), "cons_weight": weight,
                   "certain_share": float(certain.float().mean()), "threshold": threshold,
                   "annotated_share": float(annotated_pixels(batch.labels[:, 0], batch.labelled).float().mean())}
        return StepOutput(sup + weight * cons, metrics)

    def after_optimizer_step(self, nets: dict[str, nn.Module], epoch: int) -> None:
        ema_update(nets["teacher"], nets["student"], self.options.ema_decay)
