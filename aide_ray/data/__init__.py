"""Data layer: manifests, demo data, label-noise simulation, image I/O, preprocessing, Parquet shards, readers.

Names are re-exported lazily (PEP 562): Ray Data workers import
``aide_ray.data.decode`` for :func:`decode_batch`, and that must not pull in
SimpleITK, scipy and pandas through this package's ``__init__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "decode_batch": "decode",
    "make_demo_data": "demo",
    "ingest": "ingest",
    "sample_id": "ingest",
    "LABEL_KINDS": "manifest",
    "SPLITS": "manifest",
    "image_columns": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "PROTOCOLS": "noise",
    "corrupt_manifest": "noise",
    "corrupt_mask": "noise",
    "corrupt_volume": "noise",
    "ScribbleOptions": "scribbles",
    "draw_scribbles": "scribbles",
    "scribble_volume": "scribbles",
    "check_same_geometry": "image_io",
    "read_image": "image_io",
    "read_label": "image_io",
    "PreparedCase": "preprocess",
    "Preprocessing": "preprocess",
    "preprocess_case": "preprocess",
    "restore_geometry": "preprocess",
    "qubiq_manifest": "recipes",
    "shenzhen_manifest": "recipes",
    "SCHEMA": "shards",
    "load_dataset_info": "shards",
    "read_slices_local": "shards",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from aide_ray.data.decode import decode_batch
    from aide_ray.data.demo import make_demo_data
    from aide_ray.data.image_io import check_same_geometry, read_image, read_label
    from aide_ray.data.ingest import ingest, sample_id
    from aide_ray.data.manifest import LABEL_KINDS, SPLITS, image_columns, read_manifest, write_manifest
    from aide_ray.data.noise import PROTOCOLS, corrupt_manifest, corrupt_mask, corrupt_volume
    from aide_ray.data.preprocess import PreparedCase, Preprocessing, preprocess_case, restore_geometry
    from aide_ray.data.recipes import qubiq_manifest, shenzhen_manifest
    from aide_ray.data.scribbles import ScribbleOptions, draw_scribbles, scribble_volume
    from aide_ray.data.shards import SCHEMA, load_dataset_info, read_slices_local


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aide_ray.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aide_ray.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
