"""The search space of a sweep: parsing and validating it against the base config, before any Ray work.

A space is a YAML mapping of dotted config keys to one distribution each. Every
value a trial can get is checked here by applying it to the sweep's base
config, so that a typo or an out-of-range bound fails in a second, naming the
key (with the closest valid key for an unknown one), instead of after the first
trial. Its own file because it is the part of a sweep a user writes, and the
only one with no scheduling or I/O in it.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from ray import tune

from aide_ray.config import Config, all_keys
from aide_ray.exceptions import ConfigError

__all__ = [
    "Param",
    "Distribution",
    "SearchAlgorithm",
    "DISTRIBUTIONS",
    "SEARCH_ALGORITHMS",
    "DEFAULT_SPACE",
    "parse_space",
    "load_space",
    "default_space",
    "check_search",
    "tune_param_space",
    "plain_value",
    "is_number",
]

Distribution = Literal["uniform", "loguniform", "randint", "choice", "grid"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "randint", "choice", "grid")
SearchAlgorithm = Literal["random", "grid", "optuna"]
SEARCH_ALGORITHMS: tuple[str, ...] = ("random", "grid", "optuna")

# Keys a sweep cannot vary, and why.
_FIXED_KEYS: dict[str, str] = {
    "epochs": "it is the ASHA budget (max_t) shared by all trials",
    "workers": "the resources of a trial are fixed for a sweep",
    "use_gpu": "the resources of a trial are fixed for a sweep",
    "cpus_per_worker": "the resources of a trial are fixed for a sweep",
    "data.shards": "the shards are prepared once for the whole sweep",
    "data.demo_dir": "the shards are prepared once for the whole sweep",
    "data.val_split": "the split defines the metric all trials are ranked by",
    "eval.best_metric": "it defines the metric all trials are ranked by",
    "run.name": "each trial's run name is set by the sweep",
    "run.storage_path": "the sweep decides where trials write",
}

# Update ratio R, temperature T, warm-up, consistency weight lambda (AIDE's main knobs);
# jobs/configs/space.default.yaml holds the same space (a test keeps them equal).
DEFAULT_SPACE: dict[str, dict[str, list[Any]]] = {
    "aide.update_ratio": {"uniform": [0.05, 0.5]},
    "aide.temperature": {"uniform": [0.1, 1.0]},
    "aide.warmup_epochs": {"randint": [5, 31]},  # 5 ... 30: the upper bound is excluded
    "aide.consistency_weight": {"uniform": [1.0, 20.0]},
}


@dataclass(frozen=True)
class Param:
    """One swept config key.

    Attributes:
        key: dotted config key, e.g. ``aide.update_ratio``.
        distribution: ``uniform`` / ``loguniform`` (floats in [lo, hi)),
            ``randint`` (integers lo ... hi - 1: the upper bound is excluded, as in
            Python's ``range`` and ``tune.randint``), ``choice`` (one of the
            values, drawn at random) or ``grid`` (every value, with ``--search grid``).
        values: (lo, hi) for the ranges, the options for choice and grid.
    """

    key: str
    distribution: Distribution
    values: tuple[Any, ...]

    def candidates(self) -> tuple[Any, ...]:
        """The extreme values a trial can get (ranges) or every option (choice, grid)."""
        if self.distribution == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    def domain(self, search: SearchAlgorithm) -> Any:
        """The Tune search-space object of this parameter for ``search``."""
        lo_hi = self.values
        if self.distribution == "uniform":
            return tune.uniform(*lo_hi)
        if self.distribution == "loguniform":
            return tune.loguniform(*lo_hi)
        if self.distribution == "randint":
            return tune.randint(*lo_hi)
        if self.distribution == "grid" and search == "grid":
            return tune.grid_search(list(self.values))
        # choice, and grid under random / Optuna search (neither enumerates a grid).
        return tune.choice(list(self.values))


def plain_value(value: Any) -> Any:
    """``value`` as a Python scalar: Tune's samplers hand out numpy scalars, the config accepts Python ones."""
    return value.item() if hasattr(value, "item") else value


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value_at(nested: Mapping[str, Any], key: str) -> Any:
    node: Any = nested
    for part in key.split("."):
        node = node[part]
    return node


def _unknown_key(key: str, source: str) -> ConfigError:
    keys = all_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
    return ConfigError(f"unknown config key {key!r} in {source}{hint}")


def _parse_param(key: str, spec: Any, base: Config, source: str) -> Param:
    where = f"{source}: {key}"
    example = "{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}, {choice: [...]} or {grid: [...]}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{where} must be one distribution, one of {example}, got {spec!r}")
    (distribution, values), = spec.items()
    if distribution not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(distribution), DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: distribution must be one of {list(DISTRIBUTIONS)}{hint}, got {distribution!r}")
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}: {distribution} takes a list, e.g. {example}, got {values!r}")
    current = _value_at(base.to_dict(), key)
    kind = type(current).__name__  # bool, int, float or str: every config leaf is a scalar
    if distribution in ("choice", "grid"):
        if len(values) == 0:
            raise ConfigError(f"{where}: {distribution} must list at least one value, got {list(values)!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: {distribution} values must be distinct, got {list(values)!r}")
    else:
        if len(values) != 2 or not all(is_number(v) for v in values):
            raise ConfigError(f"{where}: {distribution} must be [lo, hi] with two finite numbers, got {list(values)!r}")
        lo, hi = values
        if not lo < hi:
            raise ConfigError(f"{where}: {distribution} must be [lo, hi] with lo < hi, got {list(values)!r}")
        if kind in ("bool", "str"):
            raise ConfigError(f"{where} is a {kind} setting; use choice or grid, got {distribution}")
        if distribution == "randint":
            if not all(isinstance(v, int) for v in values):
                raise ConfigError(f"{where}: randint bounds must be integers, got {list(values)!r}")
        elif kind == "int":
            raise ConfigError(f"{where} is an integer setting; use randint [lo, hi) (hi excluded), choice or grid, "
                              f"got {distribution}")
        if distribution == "loguniform" and lo <= 0:
            raise ConfigError(f"{where}: loguniform needs 0 < lo < hi, got {list(values)!r}")
    param = Param(key, distribution, tuple(values))
    for value in param.candidates():
        try:
            base.replace(**{key: value})
        except ConfigError as e:
            raise ConfigError(f"{where}: {distribution} {list(values)!r} allows a value the config rejects: {e}") from e
    return param


def parse_space(raw: Any, base: Config, *, source: str = "search space") -> dict[str, Param]:
    """Parse and validate a search space against ``base``.

    Args:
        raw: mapping of dotted config keys to one distribution each, e.g.
            ``{"aide.update_ratio": {"uniform": [0.05, 0.5]}}``.
        base: the sweep's base config; every value a trial can get is checked
            by applying it to this config (the bounds of ranges, every option of
            choice / grid).
        source: name used in error messages (the YAML file).
    Returns:
        key -> :class:`Param`, in the order of ``raw``.
    Raises:
        ConfigError: unknown key (with the closest valid one), a key that cannot
            be swept, a malformed distribution, or a value the config rejects;
            the message names the key.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{source} must be a non-empty mapping of config keys to distributions, "
                          f"e.g. 'aide.update_ratio: {{uniform: [0.05, 0.5]}}', got {raw!r}")
    valid = set(all_keys())
    space: dict[str, Param] = {}
    for key, spec in raw.items():
        key = str(key)
        if key not in valid:
            raise _unknown_key(key, source)
        if key in _FIXED_KEYS:
            raise ConfigError(f"{source}: {key} cannot be swept: {_FIXED_KEYS[key]}; set it in the config instead")
        space[key] = _parse_param(key, spec, base, source)
    return space


def load_space(path: str | Path, base: Config) -> dict[str, Param]:
    """Read a search-space YAML file and validate it against ``base`` (see :func:`parse_space`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"search space file {path} is not valid YAML: {e}") from e
    return parse_space(raw, base, source=str(path))


def default_space(base: Config | None = None) -> dict[str, Param]:
    """AIDE's default space: R in [0.05, 0.5], T in [0.1, 1], warm-up 5 ... 30 epochs, lambda in [1, 20]."""
    return parse_space(DEFAULT_SPACE, base if base is not None else Config(), source="default search space")


def check_search(search: str, space: Mapping[str, Param], num_samples: int) -> None:
    """Reject a search algorithm the space or the installation cannot run (before any Ray work).

    Raises:
        ConfigError: unknown algorithm, ``grid`` without any grid entry, ``optuna``
            without the optuna package, or ``num_samples`` < 1.
    """
    if search not in SEARCH_ALGORITHMS:
        raise ConfigError(f"--search must be one of {list(SEARCH_ALGORITHMS)}, got {search!r}")
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples!r}")
    if search == "grid" and not any(p.distribution == "grid" for p in space.values()):
        raise ConfigError("--search grid needs at least one '{grid: [...]}' entry in the search space, got none "
                          f"(keys: {', '.join(space)})")
    if search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError("--search optuna needs the optuna package, which is not installed: "
                          "pip install optuna (or pip install -e '.[tune]')")


def tune_param_space(space: Mapping[str, Param], search: SearchAlgorithm) -> dict[str, Any]:
    """Tune's ``param_space``: dotted key -> Tune domain (grid entries become ``grid_search`` under grid search)."""
    return {key: param.domain(search) for key, param in space.items()}
