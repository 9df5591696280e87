"""The one typed configuration of aide_ray.

Frozen dataclasses, loaded from YAML and overridden by dotted ``key=value``
pairs from the command line, validated completely when built: an unknown key
fails with the closest valid key, an out-of-range value fails naming the key
and the allowed range. Workers, the label store and Tune receive these
objects, never raw dicts, so a typo can never be silently ignored.

The run's own sections (data, optim, eval, run) are defined here; the model's in
:mod:`aide_ray.nn.model_config`; tracking's in :mod:`aide_ray.sections.tracking`; the
cluster's in :mod:`aide_ray.sections.cluster`; each method's options in the
method's own file, found through the method registry. A method's section is keyed by its name
(``aide.temperature``, ``gce.q``) and reached as ``cfg.options`` (the chosen
method's) or ``cfg.options_of(name)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import yaml

from aide_ray.sections.cluster import ClusterConfig
from aide_ray.sections.tracking import TrackingConfig
from aide_ray.exceptions import ConfigError
from aide_ray.methods.registry import METHOD_NAMES, method_class, options_class
from aide_ray.nn.model_config import ModelConfig
from aide_ray.options import Section, fail

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "EvalConfig",
    "RunConfig",
    "TrackingConfig",
    "load_config",
    "from_dict",
    "demo_config",
    "all_keys",
    "parse_overrides",
    "DEMO_SETTINGS",
    "PRECISIONS",
]

PRECISIONS = ("fp32", "bf16")  # the training step's arithmetic (engine.step.autocast)


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the Parquet slice shards are and how batches are drawn from them."""

    _prefix: ClassVar[str] = "data"
    shards: str = ""  # folder written by `aide-ray ingest`; empty: the built-in demo data
    demo_dir: str = "data_cache/demo"  # where the demo data is generated and ingested when shards is empty
    train_split: str = "train"
    val_split: str = "val"  # empty string: no validation
    unlabelled_fraction: float = 0.5  # semi-supervised methods: share of each batch taken from unlabelled rows
    flip_augment: bool = True  # random flips of training batches
    shuffle: bool = True  # a new order of the training rows every epoch; false: sample order (tests, debugging)
    max_retries: int = 2  # Ray Data task retries; a worker dying inside a task is otherwise retried forever

    def __post_init__(self) -> None:
        self._in_range("unlabelled_fraction", 0.0, 1.0, hi_open=True)
        self._in_range("max_retries", 0, None)
        if not self.train_split:
            fail(self._key("train_split"), "a non-empty split name", self.train_split)


@dataclass(frozen=True)
class OptimConfig(Section):
    """Adam (amsgrad) and a step schedule, as the AIDE reference code."""

    _prefix: ClassVar[str] = "optim"
    lr: float = 1e-4
    weight_decay: float = 0.0
    amsgrad: bool = True
    step_epochs: int = 30  # StepLR period
    gamma: float = 0.5  # StepLR factor

    def __post_init__(self) -> None:
        self._in_range("lr", 0.0, 1.0, lo_open=True)
        self._in_range("weight_decay", 0.0, None)
        self._in_range("step_epochs", 1, None)
        self._in_range("gamma", 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class EvalConfig(Section):
    """Post-processing of predictions and the metric that picks the best weights."""

    _prefix: ClassVar[str] = "eval"
    largest_component: bool = False
    fill_holes: bool = False
    # "auto": validation Dice of the ensemble when a validation split exists,
    # else the mean training Dice of the nets against their current labels.
    best_metric: str = "auto"

    def __post_init__(self) -> None:
        self._one_of("best_metric", ["auto", "val_dice", "train_dice"])


@dataclass(frozen=True)
class RunConfig(Section):
    """Where a run writes, how it is named, and how it survives failures."""

    _prefix: ClassVar[str] = "run"
    storage_path: str = "runs"  # local folder, NFS mount or s3:// URI
    name: str = ""  # empty: "<method>-<timestamp>"
    max_failures: int = 0  # worker-group restarts before the run fails (FailureConfig)
    checkpoints_to_keep: int = 2  # best (by eval.best_metric) and latest are always among them

    def __post_init__(self) -> None:
        self._in_range("max_failures", -1, None)
        self._in_range("checkpoints_to_keep", 1, None)
        if "/" in self.name:
            fail(self._key("name"), "a name without '/'", self.name)


@functools.lru_cache(maxsize=1)
def _method_sections() -> dict[str, type]:
    """Method name -> its options dataclass (imports the method modules once)."""
    return {name: options_class(name) for name in sorted(METHOD_NAMES)}


def _default_method_options() -> dict[str, Any]:
    return {name: cls() for name, cls in _method_sections().items()}


@dataclass(frozen=True)
class Config(Section):
    """Everything a run needs. Build with :func:`load_config`."""

    method: str = "aide"
    epochs: int = 100
    batch_size: int = 8  # per worker
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    precision: str = "fp32"  # the training step: "fp32" or "bf16" autocast (engine/step.py; CUDA, CPU allowed)
    channels_last: bool = False  # nets and training batches in channels-last (NHWC) memory format (CUDA convs)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # placement, elastic workers (multi-node)
    # Every registered method's options, keyed by method name (YAML: top-level sections).
    method_options: dict[str, Any] = field(default_factory=_default_method_options, repr=False)

    def __post_init__(self) -> None:
        self._one_of("method", sorted(METHOD_NAMES))
        self._in_range("epochs", 1, None)
        self._in_range("batch_size", 2, None)  # small-loss selection needs at least two samples
        self._in_range("workers", 1, None)
        self._in_range("cpus_per_worker", 0.0, None, lo_open=True)
        self._one_of("precision", PRECISIONS)
        needs = method_class(self.method).needs_unet
        if needs and self.model.name != "unet":
            fail("model.name", f"'unet' for method {self.method!r}, which {needs}", self.model.name)
        if self.model.deep_supervision and not method_class(self.method).reads_pyramid:
            fail("model.deep_supervision", f"false for method {self.method!r}, which never reads the heads (DDP "
                 "fails on parameters without gradients; urpc reads them and turns them on itself)", True)
        self.tracking.check_storage(self.run.storage_path)
        self.cluster.check_workers(self.workers)

    @property
    def options(self) -> Any:
        """The chosen method's options section."""
        return self.method_options[self.method]

    def options_of(self, method: str) -> Any:
        """The options section of ``method``."""
        if method not in self.method_options:
            raise ConfigError(f"method must be one of {sorted(self.method_options)}, got {method!r}")
        return self.method_options[method]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and torch weights_only-safe); method sections at the top level."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "method_options":
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        for name, options in self.method_options.items():
            if dataclasses.fields(options):  # a method without options has no section
                out[name] = dataclasses.asdict(options)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **dotted: Any) -> "Config":
        """A copy with dotted keys replaced, validated like any other config."""
        return from_dict(_merge(self.to_dict(), _nest(dotted, source="replace()")))


# --------------------------------------------------------------------------- loading

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "method_options"}


def _sections_of(cls: type) -> dict[str, Any]:
    """Field name -> type, with the method sections as fields of :class:`Config`."""
    types_ = _field_types(cls)
    if cls is Config:
        types_.update(_method_sections())
    return types_


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. ``aide.update_ratio``."""
    keys = []
    for name, tp in _sections_of(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(all_keys())}"
    return ConfigError(f"unknown config key {key!r} in {source}{hint}")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(key, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(key, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail(key, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        fail(key, "a string", value)
    if typing.get_origin(tp) is dict:  # a mapping-valued key (model.monai_args)
        if isinstance(value, Mapping) or value is None:
            return dict(value or {})
        fail(key, "a mapping", value)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return value
    return value


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} in {source} must be a mapping, got {raw!r}")
    types_ = _sections_of(cls)
    kwargs: dict[str, Any] = {}
    methods = _method_sections() if cls is Config else {}
    options = {name: options_cls() for name, options_cls in methods.items()}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise _unknown_key(key, source)
        tp = types_[name]
        if name in methods:
            options[name] = _build(tp, value or {}, f"{key}.", source)
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{key}.", source)
        else:
            kwargs[name] = _coerce(key, tp, value)
    if cls is Config:
        kwargs["method_options"] = options
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from a nested dict."""
    return _build(Config, raw, "", source)


def _nest(dotted: Mapping[str, Any], source: str) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    valid = set(all_keys())
    for key, value in dotted.items():
        if key not in valid:
            raise _unknown_key(key, source)
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["aide.temperature=0.3", "use_gpu=true"]`` -> dotted dict with YAML-typed values."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like key=value, e.g. aide.temperature=0.3")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {pair!r}: value is not valid YAML ({e})") from e
    return out


# Settings of `train` with no config (`make demo`): AIDE from the first epoch, K = 1, corrections after epochs
# 4 and 8 where the twins agree, half of the labels each; a slow ramp and lr decay let a twin that starts
# behind catch up. docs/algorithm.md 2b has the runs behind them.
DEMO_SETTINGS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 4,
    "workers": 2,
    "cpus_per_worker": 1.0,
    "model.base_width": 8,
    "optim.lr": 3e-3,
    "optim.step_epochs": 4,
    "aide.warmup_epochs": 0,
    "aide.update_every": 4,
    "aide.update_ratio": 0.5,
    "aide.ramp_epochs": 8,
    "aide.consistency_weight": 1.0,
    "aide.temperature": 1.0,
    "aide.num_augmentations": 1,
    "aide.rotation_degrees": 0.0,
    "aide.twin_flips": True,
    "aide.correct_where_agree": True,
}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                base: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config (or the defaults) and apply ``key=value`` overrides.

    Args:
        path: YAML file; None for the defaults (plus ``base``).
        overrides: dotted ``key=value`` strings, applied last.
        base: dotted settings applied before the file (used for the demo defaults).
    Raises:
        ConfigError: unknown key (with the closest valid one), bad type or out-of-range value.
    """
    raw: dict[str, Any] = _nest(base or {}, "defaults")
    source = "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        _build(Config, loaded, "", str(path))  # reports unknown keys with the file's name
        raw = _merge(raw, loaded)
        source = f"{path} + command line"
    raw = _merge(raw, _nest(parse_overrides(overrides), "command line"))
    return from_dict(raw, source)


def demo_config(overrides: Sequence[str] = ()) -> Config:
    """The configuration `train` uses when given no config file."""
    return load_config(None, overrides, base=DEMO_SETTINGS)
