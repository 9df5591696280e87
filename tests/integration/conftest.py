"""Tiny datasets for the end-to-end Ray runs (<= 128 slices each, 32 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.data.preprocess import Preprocessing

TINY = Preprocessing(target_spacing=None, size=32, normalize="zscore")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """6 cases x 4 slices: 4 train (noisy labels), 1 val, 1 test."""
    return make_demo_data(tmp_path_factory.mktemp("tiny") / "raw", cases=6, slices=4, size=32, seed=3)


@pytest.fixture(scope="session")
def tiny_shards(tiny_manifest, tmp_path_factory) -> Path:
    return ingest(tiny_manifest, tmp_path_factory.mktemp("tiny") / "shards", TINY, progress=False)


@pytest.fixture(scope="session")
def tiny_semi_shards(tiny_manifest, tmp_path_factory) -> Path:
    """The same cases with half of the train cases unlabelled (the `limited` protocol)."""
    limited = corrupt_manifest(tiny_manifest, tmp_path_factory.mktemp("tiny") / "limited", "limited",
                               seed=0, labelled_fraction=0.5)
    return ingest(limited, tmp_path_factory.mktemp("tiny") / "semi_shards", TINY, progress=False)
