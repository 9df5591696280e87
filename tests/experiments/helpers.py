"""Writers of small synthetic experiment folders and datasets, and a stand-in for the `aide-ray` CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

RUN_SCRIPT = Path(__file__).resolve().parents[2] / "jobs" / "experiments" / "run.py"


def load_run_script():
    """``jobs/experiments/run.py`` as a module (a script, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("exp_run", RUN_SCRIPT)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def write_eval(out: Path, arm: str, seed: int, dice, assd=None, hd95=None, annotators=None) -> None:
    """``OUT/eval/<arm>_s<seed>/per_case.csv`` with one row per case (and annotator)."""
    n = len(dice)
    cases = [f"c{i:02d}" for i in range(n)]
    table = pd.DataFrame({"case_id": cases, "split": "test", "dice": dice,
                          "assd": assd if assd is not None else np.linspace(1, 2, n),
                          "hd95": hd95 if hd95 is not None else np.linspace(3, 5, n)})
    if annotators is not None:
        table = pd.concat([table.assign(annotator=a) for a in annotators], ignore_index=True)
    folder = out / "eval" / f"{arm}_s{seed}"
    folder.mkdir(parents=True)
    table.to_csv(folder / "per_case.csv", index=False)


def write_timing(out: Path, arm: str, seed: int, stage: str, seconds: float, rc: int = 0) -> None:
    (out / "timing").mkdir(parents=True, exist_ok=True)
    (out / "timing" / f"{stage}_{arm}_s{seed}.json").write_text(
        json.dumps({"arm": arm, "seed": seed, "stage": stage, "rc": rc, "seconds": seconds}))


def write_experiment(out: Path, setting: str, seeds, arms, **extra) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps({
        "setting": setting, "seeds": seeds, "arms": arms, "full": False,
        "command": f"python jobs/experiments/run.py {setting} --data D --out O", "size_note": "128 x 128 inputs",
        "data_note": "synthetic", **extra}))


def make_shenzhen(folder: Path, cases: int = 20, size: int = 32) -> Path:
    """A tiny Shenzhen-like folder: ``images/NAME.png`` and ``masks/NAME.png`` (0/255 discs)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for c in range(cases):
        name = f"CHNCXR_{c:04d}_0.png"
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (size, size), dtype=np.uint8)),
                        str(folder / "images" / name))
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4 + c % 3) ** 2).astype(np.uint8) * 255
        sitk.WriteImage(sitk.GetImageFromArray(disc), str(folder / "masks" / name))
    return folder


def make_qubiq(folder: Path, cases: int = 10, raters: int = 3, size: int = 16) -> Path:
    """A tiny QUBIQ-like folder: ``images/caseNN.png`` and ``masks/caseNN_raterK.png`` (0/255, a box per rater)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for c in range(1, cases + 1):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (size, size), dtype=np.uint8)),
                        str(folder / "images" / f"case{c:02d}.png"))
        for r in range(1, raters + 1):
            mask = np.zeros((size, size), np.uint8)
            mask[4:10 + r, 4:10] = 255
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / "masks" / f"case{c:02d}_rater{r}.png"))
    return folder


# A stand-in for `python -m aide_ray.cli.main`: it writes what each stage would leave behind, instantly,
# and records every call (with start and end times) in the file $FAKE_CALLS, one JSON line each.
FAKE_CLI = r'''
import csv, json, os, shutil, sys, time
from pathlib import Path

args = sys.argv[1:]
stage = args[0]
def opt(name):
    return args[args.index(name) + 1]
def record(**rec):
    with open(os.environ["FAKE_CALLS"], "a") as fh:
        fh.write(json.dumps({"stage": stage, "time": time.time(), **rec}) + "\n")

if stage == "train":
    sets = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    name = sets["run.name"]
    record(run=name, event="start", argv=args)
    time.sleep(0.2)
    if name in os.environ.get("FAKE_FAIL", "").split(","):
        record(run=name, event="fail")
        sys.exit(1)
    run = Path(sets["run.storage_path"]) / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(Path(opt("--config")).read_text())
    record(run=name, event="end")
elif stage == "predict":
    out = Path(opt("--out"))
    out.mkdir(parents=True, exist_ok=True)
    with open(opt("--input"), newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == opt("--split"):
                shutil.copyfile(row["label"] or row["clean_label"], out / f"{row['case_id']}.png")
    record(run=Path(opt("--checkpoint")).name, event="end", split=opt("--split"))
elif stage == "evaluate":
    out = Path(opt("--out"))
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted(p.stem for p in Path(opt("--pred")).glob("*.png"))
    (out / "per_case.csv").write_text("case_id,dice,assd,hd95\n" + "".join(f"{c},1.0,0.0,0.0\n" for c in cases))
    record(run=out.name, event="end")
else:
    record(run=Path(args[1]).name, event="end")
'''


def install_fake_cli(tmp_path: Path, monkeypatch) -> Path:
    """Make every stage the experiments run (train, predict, evaluate, the pseudo-labels' predict) call
    :data:`FAKE_CLI` instead of ``aide-ray``; returns the file its calls are recorded in (JSON lines)."""
    from aide_ray.experiments import pipeline, recipe_steps  # noqa: PLC0415

    cli = tmp_path / "fake_cli.py"
    cli.write_text(FAKE_CLI)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for module in (pipeline, recipe_steps):
        monkeypatch.setattr(module, "aide_ray_cmd", lambda: [sys.executable, str(cli)])
    return calls
