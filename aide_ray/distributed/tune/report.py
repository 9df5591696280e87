"""What a finished sweep leaves behind: the results table, the winning config, one plot per swept key.

Pure functions of Tune's ``Result`` objects and the space, each output written
atomically, ``results.csv`` last so that its presence means the sweep finished.
Its own file because none of it needs a running Ray: the outputs of a sweep can
be rebuilt and tested from saved results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aide_ray._internal.io import atomic_file, atomic_write_text
from aide_ray.config import Config
from aide_ray.distributed.tune.space import Param, is_number, plain_value
from aide_ray.exceptions import ConfigError

__all__ = [
    "RESULTS_FILE",
    "BEST_CONFIG_FILE",
    "plot_file",
    "results_table",
    "best_config",
    "write_outputs",
    "summary_text",
]

# The sweep's outputs (in --out; not a run folder, so not in aide_ray.runs.folder).
RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"


def plot_file(key: str) -> str:
    """File name of the metric-vs-``key`` plot."""
    return f"metric_vs_{key}.png"


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
            row[key] = plain_value(params[key]) if params is not None and key in params else float("nan")
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
    return base.replace(**{key: plain_value(top[key]) for key in space}, **{"run.name": ""})


def _plot(table: pd.DataFrame, param: Param, metric: str, path: Path) -> None:
    column = f"best_{metric}"
    data = table[table[column].notna()]
    # A Figure on its own Agg canvas, never pyplot's global state: files only, no display on a cluster.
    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    numeric = param.distribution in ("uniform", "loguniform", "randint") or all(is_number(v) for v in param.values)
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


def write_outputs(out: Path, table: pd.DataFrame, best: Config, space: Mapping[str, Param], metric: str) -> None:
    """``metric_vs_<key>.png`` per swept key, ``best_config.yaml`` and ``results.csv`` (last), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for param in space.values():
        _plot(table, param, metric, out / plot_file(param.key))
    atomic_write_text(out / BEST_CONFIG_FILE, best.to_yaml())
    with atomic_file(out / RESULTS_FILE) as tmp:
        table.to_csv(tmp, index=False)


def summary_text(table: pd.DataFrame) -> str:
    """The results table as printed at the end of a sweep (without the error column)."""
    shown = table.drop(columns=["error"]) if "error" in table.columns else table
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
