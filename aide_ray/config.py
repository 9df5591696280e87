"""The one typed configuration of aide_ray.

Frozen dataclasses, loaded from YAML and overridden by dotted ``key=value``
pairs from the command line, validated completely when built: an unknown key
fails with the closest valid key, an out-of-range value fails naming the key
and the allowed range. Workers, the label store and Tune receive these
objects, never raw dicts, so a typo can never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import yaml

from aide_ray.exceptions import ConfigError
from aide_ray.methods.registry import METHOD_NAMES

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "AideConfig",
    "CoteachingConfig",
    "GceConfig",
    "NrDiceConfig",
    "MeanTeacherConfig",
    "CpsConfig",
    "OptimConfig",
    "EvalConfig",
    "RunConfig",
    "load_config",
    "demo_config",
    "all_keys",
]


def _fail(key: str, allowed: str, value: Any) -> None:
    raise ConfigError(f"{key} must be {allowed}, got {value!r}")


class _Section:
    """Mixin: dotted prefix for messages, range checks shared by every section."""

    _prefix: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def _in_range(self, name: str, lo: float | None, hi: float | None, *, lo_open: bool = False,
                  hi_open: bool = False) -> None:
        value = getattr(self, name)
        bad = isinstance(value, float) and not math.isfinite(value)
        if lo is not None:
            bad = bad or (value <= lo if lo_open else value < lo)
        if hi is not None:
            bad = bad or (value >= hi if hi_open else value > hi)
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open or hi is None else "]"
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            _fail(self._key(name), f"in {left}{lo_s}, {hi_s}{right}", value)

    def _one_of(self, name: str, options: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(self._key(name), f"one of {list(options)}{hint}", value)


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where the Parquet slice shards are and how batches are drawn from them."""

    _prefix: ClassVar[str] = "data"
    shards: str = ""  # folder written by `aide-ray ingest`; empty: the built-in demo data
    demo_dir: str = "data_cache/demo"  # where the demo data is generated and ingested when shards is empty
    train_split: str = "train"
    val_split: str = "val"  # empty string: no validation
    unlabelled_fraction: float = 0.5  # semi-supervised methods: share of each batch taken from unlabelled rows
    flip_augment: bool = True  # random flips of training batches in Ray Data
    max_retries: int = 2  # Ray Data task retries; a worker dying inside a task is otherwise retried forever

    def __post_init__(self) -> None:
        self._in_range("unlabelled_fraction", 0.0, 1.0, hi_open=True)
        self._in_range("max_retries", 0, None)
        if not self.train_split:
            _fail(self._key("train_split"), "a non-empty split name", self.train_split)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """U-Net size. Input channels come from the dataset (number of modalities)."""

    _prefix: ClassVar[str] = "model"
    base_width: int = 16  # paper: 64 (64 ... 1024); small for CPU runs
    num_classes: int = 2  # including background
    # A checkpoint or run folder whose weights start every net (a same-named net, else its first
    # inference net): the reference code starts both AIDE nets from one pretrained network.
    init_from: str = ""

    def __post_init__(self) -> None:
        self._in_range("base_width", 1, 1024)
        self._in_range("num_classes", 2, 255)


@dataclass(frozen=True)
class AideConfig(_Section):
    """AIDE hyperparameters; defaults follow the reference code (see docs/algorithm.md)."""

    _prefix: ClassVar[str] = "aide"
    update_ratio: float = 0.25  # R: share of eligible samples relabelled per update
    temperature: float = 0.5  # T: sharpening of the averaged pseudo-label, T < 1 sharpens
    warmup_epochs: int = 20  # labels are updated every epoch while epoch + 1 <= warmup_epochs
    update_every: int = 10  # ... and afterwards when (epoch + 1) % update_every == 0
    consistency_weight: float = 10.0  # lambda
    ramp_epochs: int = 20  # q_t: r = min((epoch / q_t)^2, 1)
    num_augmentations: int = 4  # K
    small_loss_fraction: float = 0.5  # share of each batch the twin deems clean
    rotation_degrees: float = 60.0  # augmentation rotations in [-theta, theta]
    pseudo_label_eval_mode: bool = True  # pseudo-label forward passes in eval mode (batch-norm running stats)
    correct_hq: bool = False  # whether HQ-labelled samples may be relabelled
    largest_component: bool = False  # keep the largest connected component of predictions used as labels

    def __post_init__(self) -> None:
        self._in_range("update_ratio", 0.0, 1.0, lo_open=True)
        self._in_range("temperature", 0.0, None, lo_open=True)
        self._in_range("warmup_epochs", 0, None)
        self._in_range("update_every", 1, None)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 1, None)
        self._in_range("num_augmentations", 1, 64)
        self._in_range("small_loss_fraction", 0.0, 1.0, lo_open=True)
        self._in_range("rotation_degrees", 0.0, 180.0)


@dataclass(frozen=True)
class CoteachingConfig(_Section):
    _prefix: ClassVar[str] = "coteaching"
    forget_rate: float = 0.2  # final share of each batch dropped as large-loss
    ramp_epochs: int = 10  # forget rate grows linearly to its final value over these epochs
    pixel_level: bool = False  # select small-loss pixels instead of samples (PyMIC's NLLCoTeaching)

    def __post_init__(self) -> None:
        self._in_range("forget_rate", 0.0, 1.0, hi_open=True)
        self._in_range("ramp_epochs", 0, None)


@dataclass(frozen=True)
class GceConfig(_Section):
    _prefix: ClassVar[str] = "gce"
    q: float = 0.5  # (1 - p^q) / q; q -> 0 is cross-entropy, q = 1 is MAE

    def __post_init__(self) -> None:
        self._in_range("q", 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class NrDiceConfig(_Section):
    _prefix: ClassVar[str] = "nrdice"
    gamma: float = 1.5  # exponent of |p - y|; 2 gives the usual soft Dice's numerator form

    def __post_init__(self) -> None:
        self._in_range("gamma", 1.0, 2.0)


@dataclass(frozen=True)
class MeanTeacherConfig(_Section):
    _prefix: ClassVar[str] = "meanteacher"
    ema_decay: float = 0.99  # teacher = decay * teacher + (1 - decay) * student
    consistency_weight: float = 0.1
    ramp_epochs: int = 20  # sigmoid ramp-up of the consistency weight
    noise_std: float = 0.1  # Gaussian input noise on unlabelled images

    def __post_init__(self) -> None:
        self._in_range("ema_decay", 0.0, 1.0, hi_open=True)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("noise_std", 0.0, None)


@dataclass(frozen=True)
class CpsConfig(_Section):
    _prefix: ClassVar[str] = "cps"
    consistency_weight: float = 1.0
    ramp_epochs: int = 20

    def __post_init__(self) -> None:
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)


@dataclass(frozen=True)
class OptimConfig(_Section):
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
class EvalConfig(_Section):
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
class RunConfig(_Section):
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
            _fail(self._key("name"), "a name without '/'", self.name)


@dataclass(frozen=True)
class Config(_Section):
    """Everything a run needs. Build with :func:`load_config`."""

    method: str = "aide"
    epochs: int = 100
    batch_size: int = 8  # per worker
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aide: AideConfig = field(default_factory=AideConfig)
    coteaching: CoteachingConfig = field(default_factory=CoteachingConfig)
    gce: GceConfig = field(default_factory=GceConfig)
    nrdice: NrDiceConfig = field(default_factory=NrDiceConfig)
    meanteacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    cps: CpsConfig = field(default_factory=CpsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self._one_of("method", sorted(METHOD_NAMES))
        self._in_range("epochs", 1, None)
        self._in_range("batch_size", 2, None)  # small-loss selection needs at least two samples
        self._in_range("workers", 1, None)
        self._in_range("cpus_per_worker", 0.0, None, lo_open=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and torch weights_only-safe)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **dotted: Any) -> "Config":
        """A copy with dotted keys replaced, validated like any other config."""
        return from_dict(_merge(self.to_dict(), _nest(dotted, source="replace()")))


# --------------------------------------------------------------------------- loading

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. ``aide.update_ratio``."""
    keys = []
    for name, tp in _field_types(cls).items():
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
        _fail(key, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        _fail(key, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        _fail(key, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        _fail(key, "a string", value)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return value
    return value


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} in {source} must be a mapping, got {raw!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise _unknown_key(key, source)
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{key}.", source)
        else:
            kwargs[name] = _coerce(key, tp, value)
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


# Small, CPU-friendly settings used when `train` is run with no config at all.
# Labels are first corrected after three epochs of learning (warm-up 0, every 3
# epochs), since a net of a few minutes' training would otherwise relabel with
# near-empty predictions.
DEMO_SETTINGS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 4,
    "workers": 2,
    "cpus_per_worker": 1.0,
    "model.base_width": 8,
    "optim.lr": 3e-3,
    "aide.warmup_epochs": 0,
    "aide.update_every": 3,
    "aide.ramp_epochs": 4,
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
