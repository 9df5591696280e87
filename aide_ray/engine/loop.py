"""Single-process reference training loop over in-memory arrays.

The same method plug-ins and step helpers as the Ray engine
(:mod:`aide_ray.engine.step`), without Ray: one process, numpy arrays in
memory, labels corrected in place. It is the executable specification of a
run (tests check the algorithm on it), the "plain PyTorch" side of the Ray
overhead benchmark (which calls :func:`iterate_batches` and
:func:`make_batch` on pre-decoded arrays), and a convenient way to try a
method on a small dataset.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import nn

from aide_ray.engine.checkpoint import init_nets_from
from aide_ray.engine.step import correction_candidates, ensemble_probs, make_optimizers, train_one_step
from aide_ray.exceptions import ConfigError
from aide_ray.methods.base import Batch, Method
from aide_ray.methods.correction import (dice_per_sample, eligible_mask, has_foreground, select_for_correction,
                                         should_update, target_slot)
from aide_ray.methods.registry import method_class

if TYPE_CHECKING:
    from aide_ray.config import Config

__all__ = [
    "InMemoryResult",
    "iterate_batches",
    "make_batch",
    "ensemble_dice",
    "collect_candidates",
    "apply_correction",
    "train_in_memory",
]


@dataclass
class InMemoryResult:
    """What :func:`train_in_memory` returns.

    Attributes:
        method: the method instance.
        nets: the nets after the last epoch (CPU, train mode).
        history: one dict per epoch: ``epoch``, ``loss`` and the method's step
            metrics (means over the epoch's steps), ``train_dice_<net>`` (Dice of
            each label slot's net against its current labels, mean over labelled
            rows, before that epoch's correction), ``val_dice`` (ensemble, when
            ``val`` is given), ``labels_corrected`` (labels replaced, all slots),
            ``lr``, ``seconds`` (whole epoch), ``slices_per_s`` (training steps only).
        labels: (N, S, H, W) uint8, each slot's current labels at the end.
        best_epoch: the epoch with the best ``best_metric`` (first on ties).
        best_metric: its value (val Dice, or mean train Dice; see docs/algorithm.md).
        best_state: net name -> state dict (CPU copies) at ``best_epoch``.
    """

    method: Method
    nets: dict[str, nn.Module]
    history: list[dict[str, float]]
    labels: np.ndarray
    best_epoch: int = -1
    best_metric: float = float("-inf")
    best_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def iterate_batches(order: np.ndarray, batch_size: int, *, drop_last: bool = True) -> Iterator[np.ndarray]:
    """Consecutive chunks of ``order`` (row indices) of ``batch_size``.

    With ``drop_last`` a final incomplete chunk is dropped (a batch of one row
    makes small-loss selection meaningless), unless it is the only chunk.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(order)
    for start in range(0, n, batch_size):
        chunk = order[start:start + batch_size]
        if drop_last and len(chunk) < batch_size and start > 0:
            return
        yield chunk


def make_batch(images: np.ndarray, labels: np.ndarray, labelled: np.ndarray, hq: np.ndarray, index: np.ndarray,
               *, flip: np.ndarray | None = None) -> Batch:
    """A :class:`Batch` of rows ``index`` from in-memory arrays.

    Args:
        images: (N, M, H, W) float32.
        labels: (N, S, H, W) integer current labels per slot.
        labelled, hq: (N,) bool.
        index: (B,) int row indices.
        flip: optional (B,) bool, rows to flip horizontally (image and labels).
    """
    img = images[index]
    lab = labels[index]
    if flip is not None and flip.any():
        img = img.copy()
        lab = lab.copy()
        img[flip] = img[flip][..., ::-1]
        lab[flip] = lab[flip][..., ::-1]
    return Batch(
        image=torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
        labels=torch.from_numpy(np.ascontiguousarray(lab)).long(),
        labelled=torch.from_numpy(np.asarray(labelled[index], dtype=bool)),
        hq=torch.from_numpy(np.asarray(hq[index], dtype=bool)),
        sample_index=torch.from_numpy(np.asarray(index, dtype=np.int64)),
    )


def ensemble_dice(method: Method, nets: dict[str, nn.Module], images: np.ndarray, labels: np.ndarray,
                  batch_size: int, device: torch.device | str = "cpu") -> np.ndarray:
    """(N,) Dice of the ensemble's argmax (``method.eval_nets``) against ``labels`` (N, H, W)."""
    scores = []
    for start in range(0, len(images), batch_size):
        image = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
        pred = ensemble_probs(nets, method.eval_nets, image.to(device)).argmax(dim=1)
        label = torch.from_numpy(np.asarray(labels[start:start + batch_size])).long().to(device)
        scores.append(dice_per_sample(pred, label, method.cfg.model.num_classes).double().cpu().numpy())
    return np.concatenate(scores)


def collect_candidates(method: Method, nets: dict[str, nn.Module], images: np.ndarray, current: np.ndarray,
                       labelled: np.ndarray, hq: np.ndarray, batch_size: int,
                       largest_component: bool = False,
                       device: torch.device | str = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """``correction_candidates`` over every row: per slot, (dice (N,), pred (N, H, W) uint8)."""
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = []
    all_rows = np.arange(len(images))
    for index in iterate_batches(all_rows, batch_size, drop_last=False):
        parts.append(correction_candidates(method, nets, make_batch(images, current, labelled, hq, index).to(device),
                                           largest_component=largest_component))
    return [(np.concatenate([p[s][0] for p in parts]), np.concatenate([p[s][1] for p in parts]))
            for s in range(method.label_slots)]


def apply_correction(current: np.ndarray, candidates: list[tuple[np.ndarray, np.ndarray]], eligible: np.ndarray,
                     ratio: float) -> int:
    """Write the crossed label update into ``current`` (N, S, H, W) in place.

    For each scoring slot s, the samples its net fits worst (``select_for_correction``)
    get that net's prediction in slot ``target_slot(s)``, unless the prediction
    is empty (``has_foreground``). All selections are made from the candidates
    computed before any write.

    Returns:
        Number of (sample, slot) labels replaced.
    """
    num_slots = current.shape[1]
    decisions = [(s, select_for_correction(dice, ratio, eligible) & has_foreground(pred), pred)
                 for s, (dice, pred) in enumerate(candidates)]
    changed = 0
    for s, write, pred in decisions:
        current[write, target_slot(s, num_slots)] = pred[write]
        changed += int(write.sum())
    return changed


def _check_inputs(images: np.ndarray, labels: np.ndarray, labelled: np.ndarray, hq: np.ndarray,
                  num_classes: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, M, H, W), got {images.shape}")
    n, _, h, w = images.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"labels must have shape {(n, h, w)} to match images {images.shape}, got {labels.shape}")
    for name, arr in (("labelled", labelled), ("hq", hq)):
        if np.shape(arr) != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {np.shape(arr)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}) (model.num_classes), "
                         f"got values in [{labels.min()}, {labels.max()}]")


def train_in_memory(
    cfg: "Config",
    images: np.ndarray,
    labels: np.ndarray,
    labelled: np.ndarray,
    hq: np.ndarray,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> InMemoryResult:
    """Train ``cfg.method`` on in-memory arrays in this process (on the GPU when ``cfg.use_gpu``).

    Each epoch: shuffle the training rows (seeded), run ``train_one_step`` on
    batches of ``cfg.batch_size`` (random horizontal flips when
    ``cfg.data.flip_augment``), step the LR schedules, score every row with each
    slot's net, evaluate the ensemble on ``val``, and, for methods that correct
    labels, when ``should_update(epoch, aide.warmup_epochs, aide.update_every)``:
    replace the labels of the worst-fitting eligible share ``aide.update_ratio``
    per slot, crossed (docs/algorithm.md).

    Args:
        cfg: the run configuration (``cfg.method`` picks the method).
        images: (N, M, H, W) float32, normalised; H, W divisible by 16.
        labels: (N, H, W) uint8 class indices (given labels; zeros for unlabelled rows).
        labelled: (N,) bool, the row has a label.
        hq: (N,) bool, the label is high quality (never corrected unless ``aide.correct_hq``).
        val: optional (images (V, M, H, W), labels (V, H, W)) for the ensemble Dice.
        epochs: overrides ``cfg.epochs``.
        seed: seeds the nets' initialisation, the augmentations and the shuffling.
        callback: called as ``callback(epoch, record)`` after every epoch.

    Returns:
        :class:`InMemoryResult`.

    Raises:
        ConfigError: ``use_gpu`` without a CUDA device.
        ValueError: on inconsistent shapes, labels outside [0, num_classes), no
            trainable rows, or ``eval.best_metric = "val_dice"`` without ``val``.
    """
    labelled = np.asarray(labelled, dtype=bool)
    hq = np.asarray(hq, dtype=bool)
    _check_inputs(images, labels, labelled, hq, cfg.model.num_classes)
    if cfg.eval.best_metric == "val_dice" and val is None:
        raise ValueError("eval.best_metric is 'val_dice' but no validation data was given; "
                         "pass val=(images, labels) or set eval.best_metric to 'auto' or 'train_dice'")
    use_val = val is not None and cfg.eval.best_metric != "train_dice"
    n_epochs = cfg.epochs if epochs is None else epochs
    if n_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {n_epochs}")

    if cfg.use_gpu and not torch.cuda.is_available():
        raise ConfigError("use_gpu is true but torch sees no CUDA device")
    device = torch.device("cuda" if cfg.use_gpu else "cpu")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    method = method_class(cfg.method)(cfg, in_channels=images.shape[1])
    nets = method.build_nets()
    if cfg.model.init_from:
        init_nets_from(nets, cfg.model.init_from)
    nets = {name: net.to(device) for name, net in nets.items()}
    optimizers, schedulers = make_optimizers(cfg, nets, method.trained_nets)

    current = np.repeat(np.asarray(labels, dtype=np.uint8)[:, None], method.label_slots, axis=1)
    current[~labelled] = 0
    train_rows = np.arange(len(images)) if method.uses_unlabelled else np.flatnonzero(labelled)
    if train_rows.size == 0:
        raise ValueError(f"method {method.name!r} trains on labelled rows only, and no row is labelled")
    eligible = eligible_mask(labelled, hq, cfg.aide.correct_hq)

    result = InMemoryResult(method=method, nets=nets, history=[], labels=current)
    for epoch in range(n_epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        steps = rows = 0
        for index in iterate_batches(rng.permutation(train_rows), cfg.batch_size):
            flip = rng.random(len(index)) < 0.5 if cfg.data.flip_augment else None
            batch = make_batch(images, current, labelled, hq, index, flip=flip).to(device)
            metrics = train_one_step(method, nets, optimizers, batch, epoch)
            for key, value in metrics.items():
                sums[key] += value
            steps += 1
            rows += len(index)
        train_s = time.perf_counter() - t0
        record: dict[str, float] = {"epoch": epoch, **{k: v / steps for k, v in sums.items()}}
        record["lr"] = optimizers[method.trained_nets[0]].param_groups[0]["lr"]
        for sched in schedulers.values():
            sched.step()

        candidates = collect_candidates(method, nets, images, current, labelled, hq, cfg.batch_size,
                                        largest_component=cfg.aide.largest_component, device=device)
        train_dice = []
        for slot, (dice, _) in enumerate(candidates):
            value = float(dice[labelled].mean()) if labelled.any() else float("nan")
            record[f"train_dice_{method.net_names[slot]}"] = value
            train_dice.append(value)
        if val is not None:
            record["val_dice"] = float(ensemble_dice(method, nets, val[0], val[1], cfg.batch_size, device).mean())
        metric = record["val_dice"] if use_val else float(np.mean(train_dice))
        if metric > result.best_metric:
            result.best_epoch, result.best_metric = epoch, metric
            result.best_state = {name: copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
                                 for name, net in nets.items()}

        corrected = 0
        if method.corrects_labels and should_update(epoch, cfg.aide.warmup_epochs, cfg.aide.update_every):
            corrected = apply_correction(current, candidates, eligible, cfg.aide.update_ratio)
        record["labels_corrected"] = corrected
        record["seconds"] = time.perf_counter() - t0
        record["slices_per_s"] = rows / train_s if train_s > 0 else float("nan")
        result.history.append(record)
        if callback is not None:
            callback(epoch, record)
    for name, net in nets.items():
        net.cpu()
        if name in method.trained_nets:
            net.train()
    return result
