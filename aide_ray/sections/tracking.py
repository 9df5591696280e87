"""The tracking section of the configuration: what a run logs to TensorBoard and MLflow, and where.

Kept apart from :mod:`aide_ray.engine.tracking` (which writes the logs and
imports TensorBoard, MLflow and matplotlib when a run uses them) so that
reading and validating a config imports none of them; this module imports
nothing but the options base, so :mod:`aide_ray.config` can take it from the
engine's floor without importing the engine.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aide_ray.exceptions import ConfigError
from aide_ray.options import Section, fail

__all__ = ["TrackingConfig", "TENSORBOARD_DIR", "MLFLOW_DIR", "DEFAULT_EXPERIMENT"]

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: the event files
MLFLOW_DIR = "mlruns"  # RUN_DIR/mlruns: the default MLflow file store
DEFAULT_EXPERIMENT = "aide_ray"


def _is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class TrackingConfig(Section):
    """Per-epoch metrics, label-correction statistics and correction panels to TensorBoard and MLflow.

    Both are off by default and need ``pip install aide_ray[tracking]``; rank 0
    logs after every epoch, on either backend, and every trial of a sweep logs the
    same way into its own run folder (docs/tracking.md).
    """

    _prefix: ClassVar[str] = "tracking"
    tensorboard: bool = False  # event files in RUN_DIR/tensorboard
    mlflow: bool = False  # one MLflow run per training run, named run.name (a sweep's trial: its name)
    # "": a file store in the run folder (RUN_DIR/mlruns; a sweep's trials share SWEEP_DIR/mlruns);
    # else an MLflow tracking URI (sqlite:////abs/mlflow.db, http://host:5000) or an absolute path.
    mlflow_uri: str = ""
    experiment: str = ""  # MLflow experiment; "": "aide_ray" for a run, the sweep's name for its trials
    # Also keep and log the label-correction panels every N epochs; 0: the last epoch only.
    panels_every: int = 0

    def __post_init__(self) -> None:
        self._in_range("panels_every", 0, None)
        uri = self.mlflow_uri
        if uri and ":" not in uri.split("/", 1)[0] and not os.path.isabs(uri):
            # Train workers run in a folder of their own, where a relative path means another place.
            fail(self._key("mlflow_uri"), "an MLflow tracking URI (sqlite:///..., http://..., file:///...) or an "
                 "absolute path", uri)

    @property
    def active(self) -> bool:
        """Whether anything is logged."""
        return self.tensorboard or self.mlflow

    def check_storage(self, storage_path: str) -> None:
        """Fail when the logs would go to a run folder on object storage (they are local files).

        Raises:
            ConfigError: naming the tracking key that needs a local ``run.storage_path``.
        """
        if not _is_uri(storage_path):
            return
        if self.tensorboard:
            fail(self._key("tensorboard"), f"false when run.storage_path is object storage ({storage_path}): the "
                 "event files are written to a local run folder", True)
        if self.mlflow and not self.mlflow_uri:
            fail(self._key("mlflow_uri"), f"a tracking server or database URI when run.storage_path is object "
                 f"storage ({storage_path})", self.mlflow_uri)

    def check_packages(self) -> None:
        """Fail, before any Ray work, when a switched-on tracker's package is not installed (nothing is imported).

        Not part of the config's own checks: a config that logs must still load, e.g. to
        predict from its checkpoint, where nothing is logged.

        Raises:
            ConfigError: naming the key and the extra to install.
        """
        for key, package in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
            if getattr(self, key) and importlib.util.find_spec(package) is None:
                raise ConfigError(f"tracking.{key}=true needs {package}: pip install aide_ray[tracking]")

    def sweep_overrides(self, sweep_dir: str | Path, sweep_name: str) -> dict[str, Any]:
        """Dotted settings that make a sweep's trials log as one experiment: the sweep's name, and
        one MLflow file store in the sweep folder (when the store is the default and the folder local); none
        without MLflow."""
        out: dict[str, Any] = {}
        if not self.mlflow:
            return out
        if not self.experiment:
            out["tracking.experiment"] = sweep_name
        if not self.mlflow_uri and not _is_uri(str(sweep_dir)):
            out["tracking.mlflow_uri"] = str(Path(sweep_dir).expanduser().resolve() / MLFLOW_DIR)
        return out
