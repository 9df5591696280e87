"""The manifest's label kinds, in a module without imports.

The manifest reader validates the ``label_kind`` column against these, and the
Ray Data decoder, the engine's row counts and the Ray pipeline's filters read
them too; Ray Data workers must not import pandas or SimpleITK to learn them,
hence a module of its own.

- ``hq``: a full mask of high quality (never corrected by AIDE unless asked).
- ``lq``: a full mask that may be noisy.
- ``scribble``: a partial mask: class indices where annotated,
  :data:`aide_ray.label_values.UNANNOTATED` (255) everywhere else.
- ``none``: no label (semi-supervised methods use the image alone).
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["HQ", "LQ", "SCRIBBLE", "NONE", "LABEL_KINDS", "LABELLED_KINDS", "FULL_MASK_KINDS", "labelled_rows"]

HQ, LQ, SCRIBBLE, NONE = "hq", "lq", "scribble", "none"
LABEL_KINDS: tuple[str, ...] = (HQ, LQ, SCRIBBLE, NONE)
# Kinds whose rows carry a label file (and a non-null Parquet label).
LABELLED_KINDS: tuple[str, ...] = (HQ, LQ, SCRIBBLE)
# Kinds whose label says something about every pixel: the only ones a validation Dice can use.
FULL_MASK_KINDS: tuple[str, ...] = (HQ, LQ)


def labelled_rows(kind_counts: Mapping[str, int], kinds: tuple[str, ...] = LABELLED_KINDS) -> int:
    """Rows of ``kinds`` in one split's ``dataset.json`` counts (kind -> rows)."""
    return sum(int(kind_counts.get(kind, 0)) for kind in kinds)
