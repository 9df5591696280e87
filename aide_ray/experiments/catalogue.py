"""The catalogue of the paper's settings: one YAML per setting, loaded and checked into frozen dataclasses.

A setting is described once, in ``settings/<name>.yaml`` next to this module
(shipped as package data): its title, the data-preparation recipe and its
options, the ingest size, the training config its arms share and each arm's
additions to it, the pairs the results page tests, and whether test rows carry
an annotator. ``full.yaml`` holds the paper's GPU size common to every setting.
This module only reads and checks those files; the driver
(:mod:`aide_ray.experiments.pipeline`) and the results page
(:mod:`aide_ray.experiments.report`) both read the settings through it, so a
typo fails when the file is loaded, with the file and the key in the message.
The recipes themselves are checked by :func:`aide_ray.experiments.prepare.recipe_of`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NoReturn, Sequence

import yaml

from aide_ray.config import all_keys, from_dict
from aide_ray.exceptions import ConfigError, InputError

__all__ = [
    "SETTINGS_DIR",
    "FULL_SIZE_FILE",
    "Inputs",
    "Arm",
    "Setting",
    "load_setting",
    "load_settings",
    "load_full_size",
    "settings",
    "get_setting",
]

SETTINGS_DIR = Path(__file__).resolve().parent / "settings"
FULL_SIZE_FILE = Path(__file__).resolve().parent / "full.yaml"

_SETTING_KEYS = {"title": True, "prepare": True, "inputs": True, "arms": True, "config": False, "full": False,
                 "comparisons": False, "per_annotator": False, "notes": False}  # key -> required
_PREPARE_KEYS = {"recipe": True, "options": False}
_INPUT_KEYS = {"size": True, "spacing": False}
_ARM_KEYS = {"name": True, "title": True, "data": True, "config": False, "init_from": False}
_SIZES = ("cpu", "full")
# Arm names become folder names (<arm>_s<seed>) and the scope of `--set ARM:key=value`.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Inputs:
    """How the setting's cases are ingested at one size.

    Attributes:
        size: slices are ``size`` x ``size`` pixels.
        spacing: in-plane (x, y) spacing to resample to, or None to keep each image's grid.
    """

    size: int
    spacing: tuple[float, float] | None = None


@dataclass(frozen=True)
class Arm:
    """One arm of a setting.

    Attributes:
        name: folder-safe name (``<name>_s<seed>`` under ``OUT/train``, ``pred``, ``eval``).
        title: as printed in the results tables.
        data: the training set, a key the setting's recipe makes (e.g. "noisy", "clean").
        config: nested training config merged on top of the setting's ``config``.
        init_from: an arm whose run of the same seed starts this arm's nets (``model.init_from``).
    """

    name: str
    title: str
    data: str
    config: Mapping[str, Any]
    init_from: str | None = None


@dataclass(frozen=True)
class Setting:
    """A setting of the paper, as its catalogue file describes it.

    Attributes:
        name: the file's stem (``noisy``), the sub-command of ``jobs/experiments/run.py``.
        title: the heading of its section in the results page.
        source: the catalogue file, named in every error about it.
        recipe: name of the data preparation (:data:`aide_ray.experiments.prepare.RECIPES`).
        recipe_options: keyword options of the recipe.
        inputs: ingest size per size ("cpu", "full").
        config: nested training config shared by the arms (CPU size).
        full: dotted overrides of ``--full``, after ``full.yaml``'s.
        arms: the arms, in table order.
        comparisons: (AIDE arm, baseline arm) pairs tested with paired t-tests.
        per_annotator: test rows carry an annotator; tables get one column per annotator.
        notes: free text kept with the setting.
    """

    name: str
    title: str
    source: Path
    recipe: str
    recipe_options: Mapping[str, Any]
    inputs: Mapping[str, Inputs]
    config: Mapping[str, Any]
    full: Mapping[str, Any]
    arms: tuple[Arm, ...]
    comparisons: tuple[tuple[str, str], ...]
    per_annotator: bool = False
    notes: tuple[str, ...] = ()

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def arm(self, name: str) -> Arm:
        """The arm called ``name``.

        Raises:
            InputError: no such arm (with the closest name).
        """
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise InputError(f"setting {self.name!r} has no arm {name!r}{_hint(name, self.arm_names)}; "
                         f"arms are {self.arm_names}")

    def inputs_at(self, full: bool) -> Inputs:
        """The ingest size of ``--full`` (True) or of the CPU runs (False)."""
        return self.inputs["full" if full else "cpu"]

    def arm_config(self, name: str) -> dict[str, Any]:
        """The arm's whole training config at CPU size: the setting's, with the arm's merged on top (a copy)."""
        return _merge(copy.deepcopy(dict(self.config)), copy.deepcopy(dict(self.arm(name).config)))

    def full_overrides(self, common: Mapping[str, Any]) -> list[str]:
        """``key=value`` overrides of ``--full``: ``common`` (``full.yaml``), then the setting's own."""
        pairs = {**common, **self.full}
        return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in pairs.items()]


# --------------------------------------------------------------------------- checks

def _hint(value: Any, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(source: Path, key: str, allowed: str, value: Any) -> NoReturn:
    raise ConfigError(f"{source}: {key} must be {allowed}, got {value!r}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _mapping(source: Path, where: str, raw: Any, keys: Mapping[str, bool]) -> Mapping[str, Any]:
    """``raw`` checked to be a mapping with every required key of ``keys`` and no other."""
    if not isinstance(raw, Mapping):
        _fail(source, where or "the file", "a mapping of keys", raw)
    for key in raw:
        if key not in keys:
            raise ConfigError(f"{source}: keys of {where or 'a setting'} must be among {list(keys)}, "
                              f"got {key!r}{_hint(key, list(keys))}")
    for key, required in keys.items():
        if required and key not in raw:
            raise ConfigError(f"{source}: {_join(where, key)} is missing")
    return raw


def _text(source: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(source, key, "a non-empty string", value)
    return value


def _name(source: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        _fail(source, key, "a name of letters, digits, '_', '.' and '-'", value)
    return value


def _inputs(source: Path, where: str, raw: Any) -> Inputs:
    raw = _mapping(source, where, raw, _INPUT_KEYS)
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        _fail(source, f"{where}.size", "a positive integer", size)
    spacing = raw.get("spacing")
    if spacing is not None:
        pair = [spacing, spacing] if isinstance(spacing, (int, float)) else spacing
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in pair)):
            _fail(source, f"{where}.spacing", "null, a positive number or a pair [x, y] of them", spacing)
        spacing = (float(pair[0]), float(pair[1]))
    return Inputs(size=size, spacing=spacing)


def _dotted(source: Path, where: str, raw: Any) -> dict[str, Any]:
    """A flat mapping of config keys to scalar values (``--full`` overrides)."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        _fail(source, where or "the file", "a mapping of dotted config keys", raw)
    valid = all_keys()
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"{source}: keys of {where or 'the file'} must be config keys, "
                              f"got {key!r}{_hint(key, valid)}")
        if isinstance(value, (Mapping, list)):
            _fail(source, _join(where, key), "a single value", value)
    return dict(raw)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _arms(source: Path, raw: Any, base: Mapping[str, Any]) -> tuple[Arm, ...]:
    if not isinstance(raw, list) or not raw:
        _fail(source, "arms", "a non-empty list of arms", raw)
    arms: list[Arm] = []
    for i, item in enumerate(raw):
        where = f"arms[{i}]"
        item = _mapping(source, where, item, _ARM_KEYS)
        name = _name(source, f"{where}.name", item["name"])
        where = f"arms[{i}] ({name})"
        if name in [a.name for a in arms]:
            _fail(source, f"{where}.name", "unique among the arms", name)
        config = item.get("config") or {}
        if not isinstance(config, Mapping):
            _fail(source, f"{where}.config", "a mapping of config keys", config)
        # The whole config is built once here, so a typo in an arm fails when the catalogue is read.
        try:
            from_dict(_merge(copy.deepcopy(dict(base)), config), source=f"config + {where}.config")
        except ConfigError as e:
            raise ConfigError(f"{source}: {where}.config: {e}") from e
        init_from = item.get("init_from")
        if init_from is not None:
            _name(source, f"{where}.init_from", init_from)
        arms.append(Arm(name=name, title=_text(source, f"{where}.title", item["title"]),
                        data=_name(source, f"{where}.data", item["data"]),
                        config=MappingProxyType(copy.deepcopy(dict(config))), init_from=init_from))
    names = [a.name for a in arms]
    for i, arm in enumerate(arms):
        if arm.init_from is not None and (arm.init_from not in names or arm.init_from == arm.name):
            _fail(source, f"arms[{i}] ({arm.name}).init_from", f"another arm, one of {names}", arm.init_from)
    for i, arm in enumerate(arms):  # a chain of init_from must end: arm -> its init arm -> ... without coming back
        seen, at = [arm.name], arm.init_from
        while at is not None:
            if at in seen:
                _fail(source, f"arms[{i}] ({arm.name}).init_from", "free of cycles", " -> ".join([*seen, at]))
            seen.append(at)
            at = next(a.init_from for a in arms if a.name == at)
    return tuple(arms)


def _comparisons(source: Path, raw: Any, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    raw = raw or []
    if not isinstance(raw, list):
        _fail(source, "comparisons", "a list of [AIDE arm, baseline arm] pairs", raw)
    pairs = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]
                or not all(isinstance(a, str) for a in pair)):
            _fail(source, f"comparisons[{i}]", "a pair [arm, other arm]", pair)
        for arm in pair:
            if arm not in names:
                _fail(source, f"comparisons[{i}]", f"arms of the setting {list(names)}{_hint(arm, names)}", arm)
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


# --------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"catalogue file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


def load_setting(path: str | Path) -> Setting:
    """Read and check one catalogue file; the setting is named after the file's stem.

    Raises:
        ConfigError: naming the file and the key: unknown key (with the closest valid one), a missing
            or ill-typed value, an arm config the training config rejects, a comparison or
            ``init_from`` naming no arm.
    """
    source = Path(path)
    raw = _mapping(source, "", _read_yaml(source), _SETTING_KEYS)
    name = _name(source, "the file name", source.stem)
    prepare = _mapping(source, "prepare", raw["prepare"], _PREPARE_KEYS)
    options = prepare.get("options") or {}
    if not isinstance(options, Mapping):
        _fail(source, "prepare.options", "a mapping of the recipe's options", options)
    inputs = _mapping(source, "inputs", raw["inputs"], {size: True for size in _SIZES})
    base = raw.get("config") or {}
    if not isinstance(base, Mapping):
        _fail(source, "config", "a mapping of config keys", base)
    arms = _arms(source, raw["arms"], base)
    per_annotator = raw.get("per_annotator", False)
    if not isinstance(per_annotator, bool):
        _fail(source, "per_annotator", "true or false", per_annotator)
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        _fail(source, "notes", "a list of strings", notes)
    return Setting(
        name=name, title=_text(source, "title", raw["title"]), source=source,
        recipe=_name(source, "prepare.recipe", prepare["recipe"]),
        recipe_options=MappingProxyType(dict(options)),
        inputs=MappingProxyType({size: _inputs(source, f"inputs.{size}", inputs[size]) for size in _SIZES}),
        config=MappingProxyType(copy.deepcopy(dict(base))),
        full=MappingProxyType(_dotted(source, "full", raw.get("full"))),
        arms=arms, comparisons=_comparisons(source, raw.get("comparisons"), [a.name for a in arms]),
        per_annotator=per_annotator, notes=tuple(notes))


def load_settings(folder: str | Path = SETTINGS_DIR) -> dict[str, Setting]:
    """Every ``*.yaml`` of ``folder``, by name, in the order of their titles ("Setting 1", "Setting 2", ...)."""
    found = [load_setting(path) for path in sorted(Path(folder).glob("*.yaml"))]
    if not found:
        raise ConfigError(f"{folder} holds no setting (*.yaml)")
    return {s.name: s for s in sorted(found, key=lambda s: s.title)}


def load_full_size(path: str | Path = FULL_SIZE_FILE) -> dict[str, Any]:
    """The dotted overrides of ``--full`` common to every setting."""
    return _dotted(Path(path), "", _read_yaml(Path(path)))


@functools.lru_cache(maxsize=1)
def settings() -> Mapping[str, Setting]:
    """The shipped catalogue (read once per process)."""
    return MappingProxyType(load_settings(SETTINGS_DIR))


def get_setting(name: str) -> Setting:
    """The shipped setting called ``name``.

    Raises:
        InputError: no such setting (with the closest name).
    """
    known = settings()
    if name not in known:
        raise InputError(f"setting must be one of {sorted(known)}, got {name!r}{_hint(name, list(known))}")
    return known[name]
