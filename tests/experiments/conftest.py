"""The fixture experiment folder of the results and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .helpers import write_eval, write_experiment, write_timing


@pytest.fixture
def noisy_exp(tmp_path: Path) -> Path:
    """Two seeds; AIDE beats supervised_noisy on every case, coteaching lacks seed 1."""
    out = tmp_path / "exp_noisy"
    write_experiment(out, "noisy", [0, 1], ["supervised_noisy", "coteaching", "aide"])
    base = np.array([0.80, 0.82, 0.78, 0.85, 0.81])
    write_eval(out, "supervised_noisy", 0, base)
    write_eval(out, "supervised_noisy", 1, base + 0.01)
    write_eval(out, "aide", 0, base + np.array([0.05, 0.03, 0.06, 0.02, 0.04]))
    write_eval(out, "aide", 1, base + np.array([0.04, 0.05, 0.05, 0.03, 0.02]),
               assd=np.array([1.0, np.nan, 1.2, 1.3, 1.4]))
    write_eval(out, "coteaching", 0, base + 0.02)
    write_timing(out, "aide", 0, "train", 600.0)
    write_timing(out, "aide", 1, "train", 660.0)
    write_timing(out, "supervised_noisy", 0, "train", 300.0)
    write_timing(out, "supervised_noisy", 0, "predict", 20.0, rc=1)
    return out
