"""The two evaluation passes of an epoch: scoring the training rows and validating per case.

The scoring pass runs each slot's net over this worker's unaugmented
labelled training rows: the Dice of its prediction against its current label
is the training Dice of every method and, on a correction epoch, the ranking
that picks the labels to replace; the worker keeps only its lowest-k
candidates (:class:`LowestK`), so memory stays bounded while the global
lowest-k is exact. The validation pass sums per-case overlap counts of the
ensemble's prediction, so the validation Dice is per case whatever the split
of a case's slices over workers.

A scribble label (pixels ``UNANNOTATED`` where nobody drew) is scored on its
annotated pixels only, in both passes: a prediction is neither rewarded nor
punished where the label says nothing. The label-versus-clean diagnostic reads
an unannotated pixel as "not marked foreground", so it measures how much of the
structure a label marks and rises as corrections fill a scribble in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from aide_ray.eval.dice import dice, dice_from_counts, mask_dice, overlap_counts
from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelCache
from aide_ray.methods.base import Method
from aide_ray.methods.correction import CorrectionPlan, largest_component_per_class
from aide_ray.nn.modules import ensemble_probs, hard_prediction
from aide_ray.engine.batches import to_batch

__all__ = ["LowestK", "ScoreResult", "candidate_labels", "score_pass", "val_pass", "case_dice", "gather_panels",
           "PANEL_SAMPLES", "SCORE_SAMPLES_CAP"]

PANEL_SAMPLES = 8  # label-correction panels kept for figures
SCORE_SAMPLES_CAP = 4096  # samples per epoch kept in train_scores.csv (for the Dice scatter)


class LowestK:
    """A worker's lowest-k correction candidates of one scoring slot (bounded memory).

    Holds, for at most ``k`` samples, the sample index, its score (Dice of the
    prediction against the current label), the prediction and the source label.
    Ties are broken by the lower sample index, as the store's global selection.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.index = np.zeros(0, np.int64)
        self.score = np.zeros(0, np.float32)
        self.pred = np.zeros((0, 0, 0), np.uint8)
        self.source = np.zeros((0, 0, 0), np.uint8)

    def add(self, index: np.ndarray, score: np.ndarray, pred: np.ndarray, source: np.ndarray) -> None:
        if self.k == 0 or len(index) == 0:
            return
        if len(self.index) == 0:
            self.pred = np.zeros((0, *pred.shape[1:]), np.uint8)
            self.source = np.zeros((0, *source.shape[1:]), np.uint8)
        index = np.concatenate([self.index, index])
        score = np.concatenate([self.score, score.astype(np.float32)])
        pred = np.concatenate([self.pred, pred])
        source = np.concatenate([self.source, source])
        keep = np.lexsort((index, score))[: self.k]
        self.index, self.score, self.pred, self.source = index[keep], score[keep], pred[keep], source[keep]


@dataclass
class ScoreResult:
    """What one worker's scoring pass found.

    Attributes:
        dice_sum: (S,) sum over labelled rows of each slot's Dice.
        twin_dice_sum: sum over labelled rows of the Dice between the first two slots' predictions
            (how much the twins agree; 0 with one slot).
        count: labelled rows scored.
        candidates: per slot, the lowest-k correction candidates (k = 0 without a plan).
        score_rows: (sample_index, slot, dice_pred_vs_label, dice_label_vs_clean) for train_scores.csv.
        panels: label-correction panel arrays (rank 0, last epoch only).
    """

    dice_sum: np.ndarray
    count: int
    candidates: list[LowestK]
    twin_dice_sum: float = 0.0
    score_rows: list[tuple[int, int, float, float]] = field(default_factory=list)
    panels: dict[str, list] = field(default_factory=dict)


def _predictions(method: Method, nets: Mapping[str, nn.Module], image: torch.Tensor,
                 largest_component: bool) -> list[np.ndarray]:
    """Each slot's net's hard prediction (B, H, W) uint8 on the host."""
    preds = []
    for slot in range(method.label_slots):
        pred = hard_prediction(nets[method.net_names[slot]], image).cpu().numpy()
        preds.append(largest_component_per_class(pred) if largest_component else pred)
    return preds


def candidate_labels(preds: list[np.ndarray], current: np.ndarray, plan: CorrectionPlan) -> list[np.ndarray]:
    """The label each scoring slot's prediction would write into its target slot.

    Args:
        preds: per slot, (B, H, W) uint8 predictions.
        current: (B, S, H, W) uint8 current labels.
    Returns:
        Per scoring slot, (B, H, W) uint8: the prediction, or with ``plan.where_agree``
        the prediction where every net agrees and the target slot's current label elsewhere.
    """
    if not plan.where_agree or len(preds) < 2:
        return preds
    agree = np.all([p == preds[0] for p in preds[1:]], axis=0)
    return [np.where(agree, pred, current[:, plan.targets[slot]]).astype(np.uint8) for slot, pred in enumerate(preds)]


def score_pass(method: Method, nets: Mapping[str, nn.Module], rows: Iterable[Mapping[str, np.ndarray]],
               cache: LabelCache, device: torch.device, *, plan: CorrectionPlan | None, k_local: int,
               keep_panels: bool) -> ScoreResult:
    """Per-sample Dice of each slot's net against its current label; lowest-k candidates per slot.

    A sample's rank is the Dice of the net's prediction against its current
    label; what it would be relabelled with is :func:`candidate_labels`.

    Args:
        rows: the ``score`` row batches.
        plan: this epoch's correction plan (eligibility, largest component, agreement), or None.
        k_local: candidates each slot keeps (the largest per-slot k on a correction epoch, else 0).
        keep_panels: keep the first clean/noisy/current labels for the label-correction panels.
    """
    slots = method.label_slots
    result = ScoreResult(dice_sum=np.zeros(slots), count=0, candidates=[LowestK(k_local) for _ in range(slots)],
                         panels=defaultdict(list))
    largest = plan is not None and plan.largest_component
    for raw in rows:
        batch = to_batch(raw, cache, slots, device)
        current = batch.labels.cpu().numpy().astype(np.uint8)
        labelled = np.asarray(raw["has_label"], dtype=bool)
        hq = np.asarray(raw["hq"], dtype=bool)
        index = np.asarray(raw["sample_index"], dtype=np.int64)
        eligible = plan.eligible(labelled, hq) if plan is not None else np.zeros_like(labelled)
        has_clean = np.asarray(raw["has_clean_label"], dtype=bool)
        preds = _predictions(method, nets, batch.image, largest)
        new_labels = candidate_labels(preds, current, plan) if plan is not None else preds
        if slots >= 2:
            result.twin_dice_sum += float(np.sum(dice(preds[0], preds[1], method.num_classes)[labelled]))
        for slot, pred in enumerate(preds):
            scores = dice(pred, current[:, slot], method.num_classes, annotated=current[:, slot] != UNANNOTATED)
            result.dice_sum[slot] += float(np.sum(scores[labelled]))
            result.candidates[slot].add(index[eligible], scores[eligible], new_labels[slot][eligible],
                                        raw["label"][eligible])
            for i in np.flatnonzero(has_clean & labelled & (index < SCORE_SAMPLES_CAP)):
                marked = np.where(current[i, slot] == UNANNOTATED, 0, current[i, slot])
                result.score_rows.append((int(index[i]), slot, float(scores[i]),
                                          mask_dice(marked, raw["clean_label"][i])))
        result.count += int(labelled.sum())
        if keep_panels:
            _keep_panels(result.panels, raw, current, has_clean & ~hq, slots)
    return result


def _keep_panels(panels: dict[str, list], raw: Mapping[str, np.ndarray], current: np.ndarray, rows: np.ndarray,
                 slots: int) -> None:
    for i in np.flatnonzero(rows):
        if len(panels["sample_index"]) >= PANEL_SAMPLES:
            return
        panels["sample_index"].append(int(raw["sample_index"][i]))
        panels["sample_id"].append(str(raw["sample_id"][i]))
        panels["image"].append(raw["image"][i])
        panels["clean"].append(raw["clean_label"][i])
        panels["noisy"].append(raw["label"][i])
        for slot in range(slots):
            panels[f"slot{slot}"].append(current[i, slot])


def val_pass(method: Method, nets: Mapping[str, nn.Module], rows: Iterable[Mapping[str, np.ndarray]],
             device: torch.device) -> dict[str, np.ndarray]:
    """Per case: overlap counts (3, K) = (|P ∩ R|, |P|, |R|) per foreground class of the ensemble's prediction."""
    counts: dict[str, np.ndarray] = {}
    for raw in rows:
        image = torch.from_numpy(np.array(raw["image"], dtype=np.float32)).to(device)  # a copy: Ray hands read-only arrays
        pred = ensemble_probs(nets, method.eval_nets, image).argmax(1).cpu().numpy()
        reference = np.asarray(raw["label"])
        inter, p_sum, r_sum = overlap_counts(pred, reference, method.num_classes,
                                             annotated=reference != UNANNOTATED)
        for i, case in enumerate(raw["case_id"]):
            row = np.stack([inter[i], p_sum[i], r_sum[i]])
            counts[str(case)] = counts[str(case)] + row if str(case) in counts else row
    return counts


def case_dice(parts: Iterable[Mapping[str, np.ndarray]]) -> float:
    """Mean over cases of the case Dice (mean over foreground classes), from every worker's counts."""
    total: dict[str, np.ndarray] = {}
    for part in parts:
        for case, c in part.items():
            total[case] = total[case] + c if case in total else c
    if not total:
        return float("nan")
    per_case = [float(np.mean(dice_from_counts(c[0], c[1], c[2]))) for c in total.values()]
    return float(np.mean(per_case))


def gather_panels(panels: Mapping[str, list], slots: int) -> dict[str, Any] | None:
    """The panels as the arrays of ``correction_samples.npz`` (net1/net2 labels; one slot is shown twice)."""
    if not panels.get("sample_index"):
        return None
    arrays: dict[str, Any] = {
        "image": np.stack(panels["image"]),
        "clean": np.stack(panels["clean"]),
        "has_clean": np.ones(len(panels["clean"]), bool),
        "noisy": np.stack(panels["noisy"]),
        "sample_id": np.array(panels["sample_id"]),
        "sample_index": np.array(panels["sample_index"]),
    }
    for slot in range(slots):
        arrays[f"net{slot + 1}"] = np.stack(panels[f"slot{slot}"])
    if slots == 1:
        arrays["net2"] = arrays["net1"]
    return arrays
