"""Carrying out a method's correction plan through the label store, identically on every backend.

Every worker reports its lowest-k candidates per scoring slot; the store picks
the global lowest-k; the workers holding the winners commit their predictions
into the plan's target slot (AIDE: crossed, net1's prediction becomes net2's
label), encoded here so that only the differences travel. An empty
prediction never replaces a label (reference code: ``if save_data.sum() > 0``),
though the sample still counts towards k.
"""

from __future__ import annotations

import numpy as np

from aide_ray.engine.backend import Backend
from aide_ray.engine.scoring import LowestK
from aide_ray.labels import encode_differences
from aide_ray.methods.correction import CorrectionPlan, has_foreground

__all__ = ["carry_out"]


def carry_out(plan: CorrectionPlan, candidates: list[LowestK], backend: Backend, epoch: int,
              ks: list[int]) -> list[int]:
    """Relabel, after ``epoch``, the global lowest-``ks[slot]`` of each scoring slot as ``plan`` says.

    Every worker must call this (it has collectives).

    Returns:
        Labels written per target slot, summed over workers (index = slot).
    """
    store = backend.labels
    changed = [0] * len(candidates)
    if max(ks, default=0) <= 0:
        return changed
    for slot, cand in enumerate(candidates):
        store.report_candidates(epoch, slot, cand.index, cand.score)
    backend.barrier()
    for slot, cand in enumerate(candidates):
        winners = store.select(epoch, slot, ks[slot]) if ks[slot] > 0 else np.zeros(0, np.int64)
        mine = np.isin(cand.index, winners) & has_foreground(cand.pred)
        # Encoded here, so only ~100 bytes per label travel to the store instead of two masks.
        packed = encode_differences(cand.pred[mine], cand.source[mine])
        target = plan.targets[slot]
        store.commit_encoded(epoch, target, cand.index[mine], packed)
        changed[target] = int(sum(backend.gather(int(mine.sum()))))
    backend.barrier()
    return changed
