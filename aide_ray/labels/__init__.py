"""AIDE's corrected labels without Ray: entry codec, worker cache, versioned store, snapshots.

The Ray actor that hosts the store lives in :mod:`aide_ray.distributed.label_actor`;
nothing in this package imports Ray, so workers, tests and offline tools (the
label export) use it directly. See docs/label_store.md.
"""

from aide_ray.labels.cache import LabelCache, LabelDelta
from aide_ray.labels.codec import apply_difference, encode_differences
from aide_ray.labels.snapshot import SNAPSHOT_FORMAT
from aide_ray.labels.store import LabelStore

__all__ = [
    "LabelStore",
    "LabelCache",
    "LabelDelta",
    "encode_differences",
    "apply_difference",
    "SNAPSHOT_FORMAT",
]
