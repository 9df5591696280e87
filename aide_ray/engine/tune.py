"""Ray Tune sweeps of a training config: search space, trial function, outputs.

A sweep is many ordinary training runs that differ in a few config keys. The
search space is a YAML mapping of dotted config keys to distributions, parsed
and validated here against the base config before any Ray work. Each Tune
trial is a *function* trainable that acts as the driver of one Ray Train run
(the Train-inside-Tune pattern of Ray Train v2): it builds the trial's config
(base config + the trial's parameters), builds the ``TorchTrainer`` with
:func:`aide_ray.engine.train.build_trainer`, and fits it; Ray's
``TuneReportCallback`` forwards every epoch's metrics to Tune, where ASHA stops
trials that trail the others, but never before their label-correction warm-up
is over. The shards are prepared once on the sweep's driver and shared by all
trials. The sweep ends with a results table, the winning config as a YAML file
that ``aide-ray train --config`` accepts, and metric-vs-parameter plots.

Kept apart from ``train.py`` because nothing in a single run depends on Tune.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import pandas as pd
import yaml

from aide_ray._internal import fs
from aide_ray._internal.io import atomic_file, atomic_write_text
from aide_ray.config import Config, all_keys
from aide_ray.exceptions import ConfigError

__all__ = [
    "Param",
    "SEARCH_ALGORITHMS",
    "DISTRIBUTIONS",
    "DEFAULT_SPACE",
    "DRIVER_CPUS",
    "DATA_CPUS_PER_TRIAL",
    "SweepOutcome",
    "parse_space",
    "load_space",
    "default_space",
    "check_search",
    "tune_param_space",
    "sweep_metric",
    "grace_period",
    "make_scheduler",
    "trial_resources",
    "resources_per_trial",
    "max_concurrent_trials",
    "trial_config",
    "train_trial",
    "results_table",
    "best_config",
    "write_outputs",
    "run_sweep",
]

Distribution = Literal["uniform", "loguniform", "randint", "choice", "grid"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "randint", "choice", "grid")
SearchAlgorithm = Literal["random", "grid", "optuna"]
SEARCH_ALGORITHMS: tuple[str, ...] = ("random", "grid", "optuna")

# The trial function only drives its Train run (the Train workers are actors
# of their own), so it asks for a sliver of a CPU, as Ray's Train-in-Tune guide does.
DRIVER_CPUS = 0.1
# CPUs kept free per concurrent trial for its Ray Data tasks: Train workers
# holding every logical CPU starve the data pipeline and the trial hangs.
DATA_CPUS_PER_TRIAL = 1.0

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


# --------------------------------------------------------------------------- search space

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
        from ray import tune

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


def _value_at(nested: Mapping[str, Any], key: str) -> Any:
    node: Any = nested
    for part in key.split("."):
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        if len(values) != 2 or not all(_is_number(v) for v in values):
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


# --------------------------------------------------------------------------- scheduling rules

def sweep_metric(cfg: Config, has_val: bool) -> str:
    """The metric trials are ranked and stopped by: the one that ranks each run's checkpoints."""
    from aide_ray.engine.train import best_metric_name

    return best_metric_name(cfg, has_val)


def _corrects_labels(method: str) -> bool:
    from aide_ray.methods.registry import method_class

    return bool(method_class(method).corrects_labels)


def grace_period(space: Mapping[str, Param], cfg: Config) -> int:
    """Epochs every trial runs before ASHA may stop it.

    For a method that corrects labels, the largest warm-up a trial can have
    (the space's largest ``aide.warmup_epochs`` value when it is swept, else the
    config's) plus one: no trial is cut before it has finished its warm-up and
    trained one epoch on the labels the warm-up left, so early stopping never
    judges a setting before its label correction has had an effect. Otherwise 1.
    """
    methods = {str(v) for v in space["method"].candidates()} if "method" in space else {cfg.method}
    if not any(_corrects_labels(m) for m in methods):
        return 1
    if "aide.warmup_epochs" in space:
        warmup = max(int(v) for v in space["aide.warmup_epochs"].candidates())
    else:
        warmup = cfg.aide.warmup_epochs
    return warmup + 1


def make_scheduler(space: Mapping[str, Param], cfg: Config, metric: str, *,
                   reduction_factor: int = 4) -> tuple[Any, str]:
    """ASHA on ``metric`` with the :func:`grace_period` rule, or FIFO when that grace period leaves nothing to stop.

    Returns:
        (scheduler, one-line description for the sweep's log)
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    grace = grace_period(space, cfg)
    if grace >= cfg.epochs:
        return FIFOScheduler(), (f"no early stopping: the grace period ({grace} epochs: largest warm-up + 1) is not "
                                 f"shorter than epochs ({cfg.epochs})")
    # stop_last_trials=False: a trial that reaches max_t ends on its own, so its Train
    # controller shuts its worker group down (and frees the workers' placement group)
    # instead of being killed by Tune right after its last report.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs, grace_period=grace,
                              reduction_factor=reduction_factor, stop_last_trials=False)
    return scheduler, f"ASHA on {metric}: grace period {grace} epochs, max_t {cfg.epochs}, reduction factor " \
                      f"{reduction_factor}"


def trial_resources(cfg: Config) -> dict[str, float]:
    """What a trial's own process (the Train driver) reserves; its Train workers are separate actors."""
    return {"CPU": DRIVER_CPUS}


def resources_per_trial(cfg: Config) -> dict[str, float]:
    """Logical resources one running trial needs in all: its Train workers, its driver and its Ray Data tasks."""
    need = {"CPU": cfg.workers * cfg.cpus_per_worker + DRIVER_CPUS + DATA_CPUS_PER_TRIAL}
    if cfg.use_gpu:
        need["GPU"] = float(cfg.workers)
    return need


def max_concurrent_trials(cfg: Config, cluster: Mapping[str, float]) -> int:
    """How many trials fit at once in ``cluster`` (``ray.cluster_resources()``); at least 1."""
    need = resources_per_trial(cfg)
    fits = [math.floor(float(cluster["CPU"] if "CPU" in cluster else 0.0) / need["CPU"] + 1e-9)]
    if "GPU" in need:
        fits.append(math.floor(float(cluster["GPU"] if "GPU" in cluster else 0.0) / need["GPU"] + 1e-9))
    return max(1, min(fits))


def _plain(value: Any) -> Any:
    # Tune's samplers hand out numpy scalars; the config accepts Python scalars only.
    return value.item() if hasattr(value, "item") else value


def trial_config(base: Config, params: Mapping[str, Any], *, name: str, storage_path: str, shards: str) -> Config:
    """A trial's config: ``base`` with the trial's parameters, its run name and storage, and the sweep's shards."""
    dotted = {key: _plain(value) for key, value in params.items()}
    dotted.update({"run.name": name, "run.storage_path": storage_path, "data.shards": shards})
    return base.replace(**dotted)


# --------------------------------------------------------------------------- the trial

def train_trial(params: dict[str, Any], *, base: dict[str, Any], shards: str, sweep_name: str,
                trials_storage: str) -> None:
    """Tune function trainable: drive one Ray Train run with the trial's parameters."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from aide_ray.config import from_dict
    from aide_ray.engine.train import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    # The trial id, not a timestamp: a restarted trial must find its own Train run again.
    cfg = trial_config(from_dict(base, source="sweep base config"), params, name=f"{sweep_name}-{trial_id}",
                       storage_path=trials_storage, shards=shards)
    trainer, store = build_trainer(cfg, shards if fs.is_uri(shards) else Path(shards), cfg.run.name,
                                   callbacks=[TuneReportCallback()], storage_path=trials_storage)
    try:
        trainer.fit()
    finally:
        ray.kill(store)


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


# --------------------------------------------------------------------------- outputs

@dataclass
class SweepOutcome:
    """What a finished sweep left behind."""

    out_dir: Path
    metric: str
    table: pd.DataFrame
    best: Config


def results_table(results: Sequence[Any], space: Mapping[str, Param], metric: str, epochs: int,
                  configs: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """One row per trial, best first.

    Args:
        results: Tune ``Result`` objects (a ``ResultGrid`` iterates as such).
        space: the swept parameters (one column each).
        metric: the ranking metric (``val_dice`` or ``train_dice``).
        epochs: the configured epochs (a trial with fewer was stopped early).
        configs: trial folder -> trial parameters, for trials that failed before
            reporting anything (a ``Result`` carries its config in its metrics).
    Returns:
        Columns ``trial_id``, one per swept key, ``final_<metric>`` (last
        epoch's), ``best_<metric>`` (best epoch's, the checkpoint kept),
        ``epochs`` (run), ``status`` (completed, stopped early or error) and
        ``error``; sorted by ``best_<metric>`` then ``final_<metric>``,
        descending, failed trials last.
    """
    rows = []
    for result in results:
        history = result.metrics_dataframe
        scores = history[metric] if history is not None and metric in history.columns else pd.Series(dtype=float)
        done = int(history["epoch"].max()) + 1 if history is not None and "epoch" in history.columns \
            and not history.empty else 0
        status = "error" if result.error is not None else ("completed" if done >= epochs else "stopped early")
        row: dict[str, Any] = {"trial_id": result.metrics["trial_id"] if result.metrics and "trial_id" in
                               result.metrics else Path(result.path).name.removeprefix("trial-")}
        params = result.config if result.config is not None else (configs or {}).get(str(result.path))
        for key in space:
            row[key] = _plain(params[key]) if params is not None and key in params else float("nan")
        row[f"final_{metric}"] = float(scores.iloc[-1]) if len(scores) else float("nan")
        row[f"best_{metric}"] = float(scores.max()) if scores.notna().any() else float("nan")
        row["epochs"] = done
        row["status"] = status
        row["error"] = "" if result.error is None else str(result.error).strip().splitlines()[-1][:300]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values([f"best_{metric}", f"final_{metric}"], ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


def best_config(base: Config, table: pd.DataFrame, space: Mapping[str, Param], metric: str) -> Config:
    """The base config with the winning trial's parameters and ``run.name`` cleared.

    Raises:
        ConfigError: no trial reported the metric (every trial failed).
    """
    scored = table[table[f"best_{metric}"].notna()] if not table.empty else table
    if scored.empty:
        errors = "; ".join(sorted(set(e for e in table["error"] if e))) if not table.empty else ""
        detail = f"; trial errors: {errors}" if errors else ""
        raise ConfigError(f"no trial of the sweep reported {metric!r}{detail}")
    top = scored.iloc[0]
    return base.replace(**{key: _plain(top[key]) for key in space}, **{"run.name": ""})


def _plot(table: pd.DataFrame, param: Param, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a cluster
    import matplotlib.pyplot as plt

    column = f"best_{metric}"
    data = table[table[column].notna()]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    try:
        numeric = param.distribution in ("uniform", "loguniform", "randint") or all(
            _is_number(v) for v in param.values)
        if numeric:
            ax.scatter(data[param.key].astype(float), data[column], s=30)
            if param.distribution == "loguniform":
                ax.set_xscale("log")
        else:
            labels = [str(v) for v in param.values]
            x = [labels.index(str(v)) for v in data[param.key]]
            ax.scatter(x, data[column], s=30)
            ax.set_xticks(range(len(labels)), labels)
        stopped = data[data["status"] == "stopped early"]
        if numeric and not stopped.empty:
            ax.scatter(stopped[param.key].astype(float), stopped[column], s=60, facecolors="none",
                       edgecolors="tab:red", label="stopped early")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(param.key)
        ax.set_ylabel(f"best {metric}")
        ax.set_title(f"{metric} vs {param.key} ({len(data)} trials)", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_outputs(out: Path, table: pd.DataFrame, best: Config, space: Mapping[str, Param], metric: str) -> None:
    """``metric_vs_<key>.png`` per swept key, ``best_config.yaml`` and ``results.csv`` (last), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for param in space.values():
        _plot(table, param, metric, out / f"metric_vs_{param.key}.png")
    atomic_write_text(out / "best_config.yaml", best.to_yaml())
    with atomic_file(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False)


def _summary(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["error"]) if "error" in table.columns else table
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


# --------------------------------------------------------------------------- the sweep

def _has_val(cfg: Config, shards: Path | str) -> bool:
    from aide_ray.data.shards import load_dataset_info
    from aide_ray.engine.data_pipeline import has_validation

    return has_validation(cfg.data.val_split, load_dataset_info(shards)["counts"]["split_label_kind"])


def run_sweep(cfg: Config, space: Mapping[str, Param], *, num_samples: int, search: SearchAlgorithm = "random",
              out: str | Path | None = None, max_concurrent: int | None = None,
              reduction_factor: int = 4) -> SweepOutcome:
    """Run a Tune sweep of ``cfg`` over ``space`` and write its outputs.

    Args:
        cfg: base config of every trial.
        space: validated space (:func:`parse_space`).
        num_samples: trials (random, optuna), or repetitions of the grid (grid).
        search: ``random``, ``grid`` or ``optuna``.
        out: folder for results.csv, best_config.yaml and the plots; default
            ``<run.storage_path>/<name>-tune`` (the sweep folder), where name is
            ``run.name`` or ``<method>-<timestamp>``.
        max_concurrent: trials at once; default from the cluster's resources
            (:func:`max_concurrent_trials`).
        reduction_factor: ASHA's reduction factor.
    Returns:
        The outputs folder, the metric, the results table and the best config.
    Raises:
        ConfigError: invalid search, or every trial failed.
        FileExistsError: the sweep folder (or results.csv in ``out``) exists already.
    """
    from aide_ray.engine.train import check_init_from, init_ray, prepare_shards

    check_search(search, space, num_samples)
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent!r}")
    name = cfg.run.name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = fs.resolve(cfg.run.storage_path)
    sweep_name = f"{name}-tune"
    sweep_dir = fs.join(storage, sweep_name)
    if out is None:
        # The outputs are local files; with object storage they go to the working directory.
        out_dir = Path.cwd() / sweep_name if fs.is_uri(storage) else Path(sweep_dir)
    else:
        out_dir = Path(out).expanduser().resolve()
    if fs.exists(sweep_dir):
        raise FileExistsError(f"sweep folder {sweep_dir} already exists; set another run.name or remove it")
    if (out_dir / "results.csv").exists():
        raise FileExistsError(f"{out_dir / 'results.csv'} already exists; choose another --out or remove it")

    shards = prepare_shards(cfg)  # once, on the sweep's driver; every trial reads the same shards
    check_init_from(cfg, shards)
    metric = sweep_metric(cfg, _has_val(cfg, shards))

    import ray
    from ray import tune

    init_ray(cfg)
    cluster = ray.cluster_resources()
    concurrent = max_concurrent or max_concurrent_trials(cfg, cluster)
    need = resources_per_trial(cfg)
    scheduler, stopping = make_scheduler(space, cfg, metric, reduction_factor=reduction_factor)
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.seed)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=cfg.to_dict(), shards=str(shards), sweep_name=name,
                             trials_storage=fs.join(sweep_dir, "trials")),
        trial_resources(cfg),
    )
    print(f"Sweeping {len(space)} parameter(s) of {cfg.method} on {shards}: {search} search, {num_samples} "
          f"sample(s), up to {concurrent} trial(s) at once (each: {need}; cluster: "
          f"CPU {cluster['CPU'] if 'CPU' in cluster else 0:g}, GPU {cluster['GPU'] if 'GPU' in cluster else 0:g}); "
          f"{stopping}.\nSweep folder: {sweep_dir}", flush=True)
    tuner = tune.Tuner(
        trainable,
        param_space=tune_param_space(space, search),
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=num_samples, search_alg=search_alg,
                                    scheduler=scheduler, max_concurrent_trials=concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage),
    )
    grid = tuner.fit()
    configs = tune.ExperimentAnalysis(grid.experiment_path).get_all_configs()
    table = results_table(list(grid), space, metric, cfg.epochs, configs)
    best = best_config(cfg, table, space, metric)
    write_outputs(out_dir, table, best, space, metric)
    print("\n" + _summary(table), flush=True)
    failed = int((table["status"] == "error").sum())
    if failed:
        print(f"\n{failed} of {len(table)} trial(s) failed; see the error column of results.csv", flush=True)
    print(f"\nBest config ({metric} = {table[f'best_{metric}'].iloc[0]:.4f}): {out_dir / 'best_config.yaml'}"
          f"\n  results: {out_dir / 'results.csv'}\n  plots:   {out_dir}/metric_vs_*.png"
          f"\n  train it: aide-ray train --config {out_dir / 'best_config.yaml'}", flush=True)
    return SweepOutcome(out_dir=out_dir, metric=metric, table=table, best=best)
