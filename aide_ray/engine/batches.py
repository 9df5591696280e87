"""From a decoded row batch (numpy, as both backends yield it) to the method's :class:`Batch`.

The one step every batch goes through on its way to a method: the source
labels get the label store's corrections overlaid, one label per slot, in the
batch's (possibly flipped) frame, and the arrays become tensors on the
device. A row batch is a dict of numpy arrays with the keys of
:func:`aide_ray.data.decode.decode_batch` plus ``flip_h``/``flip_v``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from aide_ray.data.augment import flip_rows
from aide_ray.labels import LabelCache
from aide_ray.methods.base import Batch

__all__ = ["current_labels", "to_batch", "corrected_rows"]


def current_labels(cache: LabelCache, slots: int, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B, S, H, W) uint8 current labels: the source with the store's corrections, in the batch's frame.

    Corrections are stored in the unflipped frame, so rows are unflipped, overlaid, flipped back.
    """
    source = raw["label"]
    if cache.version == 0:
        return np.repeat(source[:, None], slots, axis=1)
    flip_h, flip_v = raw["flip_h"], raw["flip_v"]
    unflipped = flip_rows(source, flip_h, flip_v)
    return np.stack([flip_rows(cache.current(s, raw["sample_index"], unflipped), flip_h, flip_v)
                     for s in range(slots)], axis=1)


def to_batch(raw: Mapping[str, np.ndarray], cache: LabelCache, slots: int, device: torch.device) -> Batch:
    """The method's batch of a row batch, on ``device``."""
    labels = current_labels(cache, slots, raw)
    batch = Batch(
        image=torch.from_numpy(np.array(raw["image"], dtype=np.float32)),  # a copy: Ray's blocks are read-only
        labels=torch.from_numpy(labels.astype(np.int64)),
        labelled=torch.from_numpy(np.array(raw["has_label"], dtype=bool)),
        hq=torch.from_numpy(np.array(raw["hq"], dtype=bool)),
        sample_index=torch.from_numpy(np.array(raw["sample_index"], dtype=np.int64)),
    )
    return batch.to(device)


def corrected_rows(batch: Batch, raw: Mapping[str, np.ndarray]) -> int:
    """Rows whose current label (any slot) differs from the source: proof that corrections reach batches."""
    source = torch.from_numpy(np.asarray(raw["label"], dtype=np.int64)).to(batch.labels.device)
    return int((batch.labels != source[:, None]).flatten(1).any(1).sum())
