"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017) for labelled + unlabelled rows.

A student U-Net is trained with L_seg on the labelled rows of each batch and
a consistency term on the unlabelled rows: the squared difference between its
softmax and that of a teacher, both fed the image plus independent Gaussian
noise. The teacher is never trained by backpropagation; after every
optimiser step its parameters become an exponential moving average of the
student's (:meth:`MeanTeacher.after_optimizer_step`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.model import build_model
from aide_ray.nn.model_config import ModelConfig
from aide_ray.nn.modules import unwrap
from aide_ray.options import Section

__all__ = ["MeanTeacherOptions", "MeanTeacher", "sigmoid_rampup", "ema_update", "student_and_teacher"]


@dataclass(frozen=True)
class MeanTeacherOptions(Section):
    _prefix: ClassVar[str] = "meanteacher"
    ema_decay: float = 0.99  # teacher = decay * teacher + (1 - decay) * student
    consistency_weight: float = 0.1
    ramp_epochs: int = 20  # sigmoid ramp-up of the consistency weight
    noise_std: float = 0.1  # Gaussian input noise on unlabelled images

    def __post_init__(self) -> None:
        self._in_range("ema_decay", 0.0, 1.0, hi_open=True)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("noise_std", 0.0, None)


def sigmoid_rampup(epoch: int, ramp_epochs: int) -> float:
    """Laine & Aila's ramp-up ``exp(-5 (1 - t)^2)``, ``t = clip(epoch / ramp_epochs, 0, 1)``.

    ``exp(-5) ~ 0.0067`` at epoch 0, 1 from epoch ``ramp_epochs`` on; 1 throughout when
    ``ramp_epochs = 0``. Used by mean teacher and CPS to phase in their unsupervised terms.
    """
    if ramp_epochs <= 0:
        return 1.0
    t = min(max(epoch / ramp_epochs, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@torch.no_grad()
def student_and_teacher(model: ModelConfig, in_channels: int) -> dict[str, nn.Module]:
    """A student and its teacher, a frozen copy with the same initial weights (the teacher only follows
    the student's exponential moving average)."""
    student = build_model(model, in_channels)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return {"student": student, "teacher": teacher}


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: teacher params ``= decay * teacher + (1 - decay) * student``; buffers copied.

    Batch-norm running statistics are buffers, not parameters; copying them keeps
    the teacher's normalisation consistent with the weights it averages.
    ``add_`` (in place) matters: PyMIC's ``ssl_mt.py`` writes
    ``mul_(alpha).add(param, alpha=1 - alpha)``, whose out-of-place ``add`` is
    discarded, so its teacher is only ever scaled by ``alpha``.

    Raises:
        ValueError: if the two networks' parameters or buffers do not match.
    """
    teacher, student = unwrap(teacher), unwrap(student)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError(f"teacher and student must have the same architecture, got "
                         f"{len(t_params)}/{len(t_bufs)} and {len(s_params)}/{len(s_bufs)} parameters/buffers")
    for t, s in zip(t_params, s_params):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(t_bufs, s_bufs):
        t.copy_(s)


class MeanTeacher(Method):
    """Student trained on L_seg + ramped consistency to an EMA teacher.

    ``loss = mean_labelled L_seg(student) + w(epoch) * mean_unlabelled MSE(softmax_s, softmax_t)``
    with ``w(epoch) = meanteacher.consistency_weight * sigmoid_rampup(epoch, meanteacher.ramp_epochs)``.
    The MSE is averaged over classes and pixels of each unlabelled row, as
    PyMIC's ``SSLMeanTeacher`` (``pymic/net_run/semi_sup/ssl_mt.py``); the
    original paper also applies it to labelled rows. Student and teacher see
    the image plus independent noise ``N(0, noise_std^2)`` clipped to
    ``+-2 noise_std`` (PyMIC: 0.1 clipped to 0.2, teacher input only). The
    student's single forward pass on its noisy input serves both terms.

    Reference: A. Tarvainen and H. Valpola, "Mean teachers are better role
    models", NeurIPS 2017.
    """

    Options: ClassVar[type] = MeanTeacherOptions

    name: ClassVar[str] = "meanteacher"
    net_names: ClassVar[tuple[str, ...]] = ("student", "teacher")
    trained_nets: ClassVar[tuple[str, ...]] = ("student",)
    eval_nets: ClassVar[tuple[str, ...]] = ("teacher",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True

    def build_nets(self) -> dict[str, nn.Module]:
        return student_and_teacher(self.model, self.in_channels)

    def _noisy(self, image: Tensor) -> Tensor:
        std = self.options.noise_std
        if std == 0.0:
            return image
        return image + (torch.randn_like(image) * std).clamp(-2.0 * std, 2.0 * std)

    def consistency_weight(self, epoch: int) -> float:
        cfg = self.options
        return cfg.consistency_weight * sigmoid_rampup(epoch, cfg.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        student_logits = nets["student"](self._noisy(batch.image))
        labelled = batch.labelled
        unlabelled = ~labelled
        zero = student_logits.sum() * 0.0
        if bool(labelled.any()):
            sup = segmentation_loss_per_sample(student_logits[labelled], batch.labels[labelled, 0]).mean()
        else:
            sup = zero
        weight = self.consistency_weight(epoch)
        if bool(unlabelled.any()):
            with torch.no_grad():
                teacher_prob = torch.softmax(nets["teacher"](self._noisy(batch.image[unlabelled])), dim=1)
            student_prob = torch.softmax(student_logits[unlabelled], dim=1)
            cons = ((student_prob - teacher_prob) ** 2).mean()
        else:
            cons = zero
        metrics = {"loss_sup": float(sup.detach()), "loss_cons": float(cons.detach()),
                   "cons_weight": weight, "unlabelled_rows": float(unlabelled.sum())}
        return StepOutput(sup + weight * cons, metrics)

    def after_optimizer_step(self, nets: dict[str, nn.Module], epoch: int) -> None:
        ema_update(nets["teacher"], nets["student"], self.options.ema_decay)
