"""Experiment tracking: each epoch's metrics, label-correction statistics and correction panels, to
TensorBoard and MLflow, as the config's ``tracking`` section says.

The training loop opens one :class:`Tracker` on rank 0 and hands it every
epoch's metrics row (and the panels, on the epochs that keep them); the other
ranks get an inactive one. Its own file because it is the one place that knows
the tracking libraries, both optional (``pip install aide_ray[tracking]``) and
imported only by a run that uses them. It imports no Ray: the same loop runs on
the local backend.

Where the logs go: TensorBoard event files in ``RUN_DIR/tensorboard`` (every
trial of a sweep in its own run folder, so ``tensorboard --logdir
SWEEP/trials`` shows the trials side by side); one MLflow run per training run,
named ``run.name`` (a trial's name in a sweep), tagged with its run folder, in
``tracking.experiment``, in a file store in the run folder unless
``tracking.mlflow_uri`` names another (a sweep's trials share one in the sweep
folder: :func:`prepare_sweep_tracking`). A resumed or restarted run continues
its MLflow run and purges the TensorBoard steps it repeats.

Why not Ray's own integrations: Ray Train v2's ``RunConfig`` takes only
``ray.train.UserCallback`` and refuses Ray Tune's logger callbacks
(``TBXLoggerCallback``, ``MLflowLoggerCallback``; ray-project/ray#49454). Those
run on the Tune driver, see only the scalars a trial reports, and do not exist
for a plain ``aide-ray train``. A ``UserCallback`` runs on the Train controller
with the reported metrics only: images would have to travel through
``ray.train.report`` into every result and Tune's CSV and JSON files.
``ray.air.integrations.mlflow.setup_mlflow`` does work inside a Train v2 worker,
but it wraps MLflow's global (fluent) state, and what it adds, rank-0 gating and
the config as parameters, this class does too, the same way on the local
backend, where nothing imports Ray. Tune's default ``TBXLoggerCallback`` still
writes each trial's reported scalars into the sweep's own trial folders.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.image import imread

from aide_ray.config import Config
from aide_ray.sections.tracking import DEFAULT_EXPERIMENT, MLFLOW_DIR, TENSORBOARD_DIR
from aide_ray.eval.figures import correction_grid
from aide_ray.methods.registry import METHOD_NAMES, method_class

__all__ = ["Tracker", "metric_tag", "prepare_sweep_tracking", "RUN_DIR_TAG"]

RUN_DIR_TAG = "aide_ray.run_dir"  # MLflow tag naming the run folder: a resumed run finds its MLflow run by it
_PARAM_BATCH = 100  # MLflow's most parameters per log_batch call
_PARAM_CHARS = 6000  # MLflow's longest parameter value
_TIME = ("seconds", "train_seconds", "data_wait_seconds", "slices_per_s")


def metric_tag(name: str, nets: Sequence[str]) -> str:
    """The tag of a metrics column in both trackers: grouped by what it measures.

    ``labels/`` the label-correction statistics (``relabelled_<net>``, ``selected_<net>``,
    ``corrected_<net>``, ``rows_with_corrected_label``, ``label_update``,
    ``label_version_at_start``, ``label_digest_mismatch``, ``staging_workers``); ``dice/``
    training, validation and twin Dice; ``loss/`` the losses; ``time/`` seconds, throughput
    and the epoch's ``workers``; ``optim/`` the learning rate and phase;
    ``method/`` the method's other step terms (``ramp``, ``selected_fraction``, ...).
    """
    per_net = {f"{kind}_{net}" for kind in ("relabelled", "selected", "corrected") for net in nets}
    if name in per_net or name in ("rows_with_corrected_label", "label_update", "label_version_at_start",
                                   "label_digest_mismatch", "staging_workers"):
        return f"labels/{name}"
    if name.endswith("dice") or name.startswith("train_dice_"):
        return f"dice/{name}"
    if name.startswith("loss"):
        return f"loss/{name}"
    if name in _TIME or name == "workers":
        return f"time/{name}"
    if name in ("lr", "phase"):
        return f"optim/{name}"
    return f"method/{name}"


def _scalars(metrics: Mapping[str, Any], nets: Sequence[str]) -> dict[str, float]:
    """Tag -> value of the finite numeric columns but ``epoch`` and the label digest (NaN, e.g. val_dice without
    validation, is left out)."""
    out = {}
    for name, value in metrics.items():
        if name in ("epoch", "label_digest_at_start") or not isinstance(value, (numbers.Real, np.bool_)):
            continue
        value = float(value)
        if math.isfinite(value):
            out[metric_tag(name, nets)] = value
    return out


def _params(cfg: Config) -> dict[str, str]:
    """The config as MLflow parameters: dotted keys, the chosen method's section only."""
    out: dict[str, str] = {}

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping) and value and not (prefix == "model." and key == "monai_args"):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = str(value)[:_PARAM_CHARS]

    walk({k: v for k, v in cfg.to_dict().items() if k not in METHOD_NAMES or k == cfg.method}, "")
    return out


def _summary_writer(folder: Path, purge_step: int) -> Any:
    # Imported here, not at the top: TensorBoard is an optional extra (aide_ray[tracking])
    # that only a run with tracking.tensorboard=true needs.
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: TensorBoard drops the steps from here on that earlier event files of
    # this folder hold (a resumed or restarted run repeats them).
    return SummaryWriter(str(folder), purge_step=purge_step)


def _mlflow() -> Any:
    """The ``mlflow`` package with the parts used here."""
    # Imported here, not at the top: MLflow is an optional extra (aide_ray[tracking]) that
    # only a run with tracking.mlflow=true needs, and takes a second to import.
    import mlflow.entities
    import mlflow.exceptions
    import mlflow.tracking

    return mlflow


def _mlflow_client(uri: str) -> Any:
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3 keeps its file store behind this switch ("maintenance mode"); it is the
        # default here because it needs no server or database and lives in the run folder.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return _mlflow().tracking.MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    """The experiment ``name``, created when missing (by whichever trial of a sweep gets there first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except _mlflow().exceptions.MlflowException:
        found = client.get_experiment_by_name(name)  # created meanwhile by another process
        if found is None:
            raise
        return found.experiment_id


def prepare_sweep_tracking(cfg: Config, sweep_dir: str | Path, sweep_name: str) -> Config:
    """A sweep's base config with its trials' tracking settings (one experiment named after the sweep, one
    MLflow file store in the sweep folder), the packages checked and the experiment created before any trial,
    so that trials starting together find one."""
    overrides = cfg.tracking.sweep_overrides(sweep_dir, sweep_name)
    cfg = cfg.replace(**overrides) if overrides else cfg
    cfg.tracking.check_packages()
    if cfg.tracking.mlflow:
        _experiment_id(_mlflow_client(cfg.tracking.mlflow_uri), cfg.tracking.experiment)
    return cfg


class Tracker:
    """Rank 0's logger of a run's epochs; inactive (every call a no-op) when ``run_dir`` is None or tracking is off.

    Args:
        cfg: the run's configuration (``tracking.*``, ``run.name``, the method).
        run_dir: the run folder (a local path), None on the other ranks.
        start_epoch: the first epoch this invocation trains (0, or the epoch a resume starts at).

    Raises:
        ConfigError: a switched-on tracker's package is not installed.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None, *, start_epoch: int = 0) -> None:
        self._cfg = cfg.tracking
        method = method_class(cfg.method)
        self._nets = method.net_names[: method.label_slots]
        self._writer: Any = None
        self._client: Any = None
        self._run_id = ""
        if run_dir is None or not self._cfg.active:
            return
        self._cfg.check_packages()
        run_dir = Path(run_dir)
        if self._cfg.tensorboard:
            self._writer = _summary_writer(run_dir / TENSORBOARD_DIR, start_epoch)
            yaml_block = "\n".join("    " + line for line in cfg.to_yaml().splitlines())
            self._writer.add_text("config", yaml_block, start_epoch)
        if self._cfg.mlflow:
            self._open_mlflow(cfg, run_dir)

    def _open_mlflow(self, cfg: Config, run_dir: Path) -> None:
        self._client = _mlflow_client(self._cfg.mlflow_uri or str(run_dir / MLFLOW_DIR))
        experiment = _experiment_id(self._client, self._cfg.experiment or DEFAULT_EXPERIMENT)
        # Quotes would end the filter's string: such a folder gets a new MLflow run on resume.
        same = [] if "'" in str(run_dir) else self._client.search_runs(
            [experiment], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1)
        if same:
            self._run_id = same[0].info.run_id
            self._client.update_run(self._run_id, status="RUNNING")
            return
        run = self._client.create_run(experiment, run_name=cfg.run.name or None,
                                      tags={RUN_DIR_TAG: str(run_dir), "aide_ray.method": cfg.method})
        self._run_id = run.info.run_id
        params = [_mlflow().entities.Param(key, value) for key, value in _params(cfg).items()]
        for start in range(0, len(params), _PARAM_BATCH):
            self._client.log_batch(self._run_id, params=params[start:start + _PARAM_BATCH])

    @property
    def active(self) -> bool:
        """Whether anything is logged."""
        return self._writer is not None or self._client is not None

    def wants_panels(self, epoch: int) -> bool:
        """Whether the loop should keep the label-correction panels of (0-based) ``epoch`` for :meth:`log_epoch`."""
        every = self._cfg.panels_every
        return self.active and every > 0 and (epoch + 1) % every == 0

    def log_epoch(self, metrics: Mapping[str, Any], panels: Mapping[str, np.ndarray] | None = None) -> None:
        """Log one epoch: its metrics row's numbers (step = the row's 0-based ``epoch``) and, when given, the
        label-correction panels as one image (``labels/corrections``; an MLflow artifact under ``corrections/``).

        Args:
            metrics: the epoch's metrics row (``metrics.csv``'s columns).
            panels: the arrays of ``correction_samples.npz`` (``image`` (N, M, H, W), ``clean``, ``noisy``,
                ``net1``, ``net2`` (N, H, W), ``has_clean`` (N,), ``sample_id`` (N,)), or None.
        """
        if not self.active:
            return
        step = int(metrics["epoch"])
        scalars = _scalars(metrics, self._nets)
        with tempfile.TemporaryDirectory(prefix="aide-tracking-") as tmp:
            png = None
            if panels is not None and len(panels["image"]):
                png = Path(tmp) / f"corrections_epoch{step:03d}.png"
                correction_grid(panels["image"], panels["clean"], panels["has_clean"], panels["noisy"],
                                panels["net1"], panels["net2"], [str(s) for s in panels["sample_id"]], png)
            if self._writer is not None:
                self._log_tensorboard(step, scalars, png)
            if self._client is not None:
                self._log_mlflow(step, scalars, png)

    def _log_tensorboard(self, step: int, scalars: Mapping[str, float], png: Path | None) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        if png is not None:
            rgb = (imread(png)[..., :3] * 255).round().astype(np.uint8)  # PNG reads as float RGBA in [0, 1]
            self._writer.add_image("labels/corrections", rgb, step, dataformats="HWC")
        self._writer.flush()

    def _log_mlflow(self, step: int, scalars: Mapping[str, float], png: Path | None) -> None:
        metric = _mlflow().entities.Metric
        try:
            stamp = int(1000 * time.time())
            self._client.log_batch(self._run_id, metrics=[metric(tag, value, stamp, step)
                                                          for tag, value in scalars.items()])
            if png is not None:
                self._client.log_artifact(self._run_id, str(png), "corrections")
        except Exception as e:  # noqa: BLE001 - a tracking server's hiccup must not end a training run
            warnings.warn(f"MLflow logging of epoch {step} failed, MLflow logging stops for this run: {e}",
                          RuntimeWarning, stacklevel=2)
            self._client = None

    def close(self, failed: bool = False) -> None:
        """Flush and close the event file; end the MLflow run (FINISHED, or FAILED). Idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._client is not None:
            self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")
            self._client = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(failed=exc_type is not None)
