"""Fixtures of the data tests: the demo dataset, its shards, and tiny hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    """The default demo dataset (12 cases x 8 slices x 64 px), written once per session."""
    return make_demo_data(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="session")
def demo_shards(demo_manifest, tmp_path_factory) -> Path:
    """The demo dataset ingested at 64 px into 3 shards of 32 rows."""
    return ingest(demo_manifest, tmp_path_factory.mktemp("shards") / "shards", Preprocessing(size=64),
                  rows_per_shard=32, progress=False)


def _write_volume(path: Path, arr: np.ndarray, spacing=(0.7, 0.9, 3.0), origin=(1.0, -2.0, 5.0)) -> Path:
    """Write (S, H, W) or (H, W) ``arr`` with the given geometry."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: arr.ndim])
    img.SetOrigin(origin[: arr.ndim])
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def _blob(shape=(3, 32, 32), radius=8) -> np.ndarray:
    """(S, H, W) uint8 disc mask in every slice."""
    s, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < radius ** 2
    return np.repeat(disc[None], s, axis=0).astype(np.uint8)


@pytest.fixture
def tiny_case(tmp_path):
    """A factory writing a small valid dataset (2 cases, 3 x 32 x 32) and its manifest.

    Returns a function ``make(rows=None, **overrides) -> Path`` writing
    ``manifest.csv`` from the two default rows updated by ``rows``.
    """
    rng = np.random.default_rng(0)
    for i in range(2):
        _write_volume(tmp_path / f"img{i}.nii.gz", (rng.random((3, 32, 32)) * 100).astype(np.float32))
        _write_volume(tmp_path / f"lab{i}.nii.gz", _blob())

    def make(rows: list[dict] | None = None) -> Path:
        default = [
            {"case_id": "c0", "image": "img0.nii.gz", "label": "lab0.nii.gz", "label_kind": "lq",
             "annotator": "", "split": "train"},
            {"case_id": "c1", "image": "img1.nii.gz", "label": "lab1.nii.gz", "label_kind": "hq",
             "annotator": "", "split": "val"},
        ]
        for i, update in enumerate(rows or []):
            default[i].update(update)
        path = tmp_path / "manifest.csv"
        pd.DataFrame(default).to_csv(path, index=False)
        return path

    make.dir = tmp_path
    return make


@pytest.fixture
def write_volume():
    """``write_volume(path, arr, spacing=(0.7, 0.9, 3.0), origin=(1.0, -2.0, 5.0)) -> path``."""
    return _write_volume


@pytest.fixture
def blob():
    """``blob(shape=(3, 32, 32), radius=8)``: (S, H, W) uint8 disc in every slice."""
    return _blob
