"""One stage as a subprocess (aide_ray.experiments.stages): its log, its timing record, its exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aide_ray.experiments.stages import PACKAGE_PARENT, run_stage


def test_run_stage_logs_the_command_and_records_its_wall_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "logs" / "train_a_s0.log"
    monkeypatch.setenv("WANT", str(PACKAGE_PARENT))
    code = "import os, aide_ray; print('hello', os.getcwd() == os.environ['WANT'], aide_ray.__file__)"
    assert run_stage(tmp_path, "train", "a", 0, [sys.executable, "-c", code], log)
    text = log.read_text()
    assert text.startswith("$ ") and "hello True" in text
    assert str(PACKAGE_PARENT / "aide_ray") in text  # this copy of the package, first on PYTHONPATH
    rec = json.loads((tmp_path / "timing" / "train_a_s0.json").read_text())
    assert (rec["arm"], rec["seed"], rec["stage"], rec["rc"]) == ("a", 0, "train", 0) and rec["seconds"] >= 0
    assert not run_stage(tmp_path, "predict", "a", 0, [sys.executable, "-c", "raise SystemExit(3)"], log)
    assert json.loads((tmp_path / "timing" / "predict_a_s0.json").read_text())["rc"] == 3
