"""What a data recipe of a setting gets and what it makes, and the recipe itself as the registry holds it.

The recipes are in :mod:`aide_ray.experiments.prepare` (which re-exports these
names); the types are apart so that the recipes module holds recipes only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from aide_ray.experiments.catalogue import Inputs

__all__ = ["PrepareContext", "LaterData", "Prepared", "Recipe"]


@dataclass(frozen=True)
class PrepareContext:
    """What every recipe gets: the dataset, the experiment folder, the ingest size, ``--force``."""

    data: Path
    out: Path
    inputs: Inputs
    force: bool = False


@dataclass(frozen=True)
class LaterData:
    """A training set made during the run, per seed, from another arm's finished run of that seed.

    Attributes:
        after_arm: the arm whose run of the seed must finish first.
        make: seed -> shards folder, or None when that run did not finish (its arms are skipped).
    """

    after_arm: str
    make: Callable[[int], Path | None]


@dataclass(frozen=True)
class Prepared:
    """What a recipe made.

    Attributes:
        train: training-set key -> Parquet shards folder.
        reference: manifest whose test rows hold the HQ masks the predictions are scored against.
        note: a sentence about the data (cases per split, noise) for ``experiment.json`` and the results page.
        later: training-set key -> a set made during the run (setting 3's pseudo-labels).
    """

    train: Mapping[str, Path]
    reference: Path
    note: str
    later: Mapping[str, LaterData] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A data preparation a catalogue file can name.

    Attributes:
        prepare: ``(ctx, **options) -> Prepared``; its keyword-only parameters are the recipe's options.
        data_keys: the training sets it makes (an arm's ``data``).
        arm_options: options whose value must name an arm of the setting.
    """

    prepare: Callable[..., Prepared]
    data_keys: tuple[str, ...]
    arm_options: tuple[str, ...] = ()

    def options(self) -> dict[str, bool]:
        """Option name -> whether it is required (no default)."""
        params = inspect.signature(self.prepare).parameters.values()
        return {p.name: p.default is inspect.Parameter.empty for p in params if p.kind is p.KEYWORD_ONLY}
