"""Carrying out a method's correction plan through the label store, identically on every backend.

Every worker reports its lowest-k candidates per scoring slot; the store picks
the global lowest-k; the workers holding the winners stage their predictions
for the plan's target slot (AIDE: crossed, net1's prediction becomes net2's
label), encoded here so that only the differences travel; rank 0 then
publishes the epoch: every staged row becomes the store's labels in one
version, or, if the rows staged differ from the workers' own counts, none
(docs/label_store.md). An empty prediction never replaces a label (reference
code: ``if save_data.sum() > 0``), though the sample still counts towards k:
so ``relabelled <= selected``, and ``selected == k`` when there were k candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aide_ray.engine.backend import Backend
from aide_ray.engine.scoring import LowestK
from aide_ray.labels import encode_differences
from aide_ray.methods.correction import CorrectionPlan, has_foreground

__all__ = ["Relabelled", "carry_out"]


@dataclass(frozen=True)
class Relabelled:
    """What an epoch's correction did, per target label slot (index = slot), summed over workers.

    Attributes:
        changed: labels written (the winners with a non-empty prediction).
        selected: winners whose prediction was to be written (k of the scoring slot, or
            fewer when there were fewer candidates).
        staging_workers: workers that staged labels (a multi-node test checks that every
            worker reads, in the next epoch, what the others staged).
    """

    changed: list[int]
    selected: list[int]
    staging_workers: int = 0  # workers that staged at least one label (each the holder of some winners)

    @classmethod
    def none(cls, label_slots: int) -> Relabelled:
        """An epoch without correction."""
        return cls(changed=[0] * label_slots, selected=[0] * label_slots)


def carry_out(plan: CorrectionPlan, candidates: list[LowestK], backend: Backend, epoch: int,
              ks: list[int]) -> Relabelled:
    """Relabel, after ``epoch``, the global lowest-``ks[slot]`` of each scoring slot as ``plan`` says.

    Every worker must call this (it has collectives). The epoch's corrections reach
    the store all at once (one version) or not at all.
    """
    store = backend.labels
    slots = len(candidates)
    if max(ks, default=0) <= 0:
        return Relabelled.none(slots)
    for slot, cand in enumerate(candidates):
        store.report_candidates(epoch, slot, cand.index, cand.score)
    backend.barrier()
    staged, selected = [0] * slots, [0] * slots
    for slot, cand in enumerate(candidates):
        winners = store.select(epoch, slot, ks[slot]) if ks[slot] > 0 else np.zeros(0, np.int64)
        mine = np.isin(cand.index, winners) & has_foreground(cand.pred)
        # Encoded here, so only ~100 bytes per label travel to the store instead of two masks.
        packed = encode_differences(cand.pred[mine], cand.source[mine])
        target = plan.targets[slot]
        if mine.any():
            store.stage(epoch, target, cand.index[mine], packed)
        staged[target] += int(mine.sum())
        selected[target] += int(winners.size)
    parts = backend.gather(staged)  # also waits until every worker has staged
    changed = [int(sum(part[t] for part in parts)) for t in range(slots)]
    if backend.rank == 0:
        store.publish(epoch, dict(enumerate(changed)))
    backend.barrier()  # the epoch is published before anyone reads it
    return Relabelled(changed=changed, selected=selected, staging_workers=sum(sum(part) > 0 for part in parts))
