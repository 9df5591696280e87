#!/usr/bin/env python
"""One-command recipes of the AIDE paper's three settings on real data, and the results page.

    python jobs/experiments/run.py noisy      --data ../shared/data/shenzhen_cxr_lungs --out runs/exp_noisy
    python jobs/experiments/run.py annotators --data ../shared/data/qubiq_brain_growth --out runs/exp_annotators
    python jobs/experiments/run.py limited    --data ../shared/data/shenzhen_cxr_lungs --out runs/exp_limited
    python jobs/experiments/run.py report runs/exp_noisy runs/exp_annotators runs/exp_limited --out docs/results.md

Options of the three settings: ``--seeds 0 1 2`` (training seeds; the data split and the
label noise keep seed 0), ``--arms a b`` (a subset), ``--full`` (the paper's GPU size from
jobs/experiments/full.yaml), ``--set key=value`` (extra config overrides for every arm),
``--parallel N`` (arms trained at the same time), ``--force`` (redo finished arms),
``--engine plain`` (train with jobs/train_plain.py: one process, no Ray).

Every step is an ``aide-ray`` command (train, predict, evaluate, figures) or a library call
of ``aide_ray.data`` (manifests, label corruption, ingest), run in this order per arm and seed:
train -> predict the test split with the best checkpoint -> evaluate against the HQ test
masks. Finished steps are skipped on a rerun, so an interrupted recipe continues where it
stopped. Wall time of every stage goes to ``OUT/timing/``. See docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import yaml

EXP_DIR = Path(__file__).resolve().parent
REPO = EXP_DIR.parents[1]
if str(REPO) not in sys.path:  # run from a fresh checkout without installing
    sys.path.insert(0, str(REPO))

from aide_ray.experiments import EXPERIMENT_FILE, SETTINGS, SettingSpec, run_name, write_results  # noqa: E402

NOISE_SEED = 0  # seed of the case split, the label corruption and the random-rater draw (data, not training)
_print_lock = threading.Lock()


def log(msg: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def aide_ray_cmd() -> list[str]:
    """The CLI, as the module of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "aide_ray.cli.main"]


def run_stage(out: Path, stage: str, arm: str, seed: int, cmd: Sequence[str], log_file: Path) -> bool:
    """Run one command, log its output, record its wall time in OUT/timing/<stage>_<arm>_s<seed>.json."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log(f"{stage} {run_name(arm, seed)}: {shlex.join(cmd)}")
    start = time.time()
    with open(log_file, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.time() - start
    timing = out / "timing" / f"{stage}_{run_name(arm, seed)}.json"
    timing.parent.mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps({"arm": arm, "seed": seed, "stage": stage, "rc": rc, "seconds": round(seconds, 1),
                                  "started": start, "command": shlex.join(cmd)}) + "\n")
    log(f"{stage} {run_name(arm, seed)}: exit {rc} after {seconds / 60:.1f} min (log {log_file})")
    return rc == 0


# --------------------------------------------------------------------------- sizes

def load_full_overrides(setting: str) -> list[str]:
    """``key=value`` overrides of jobs/experiments/full.yaml: its ``all`` section, then the setting's."""
    raw = yaml.safe_load((EXP_DIR / "full.yaml").read_text())
    pairs = {**raw["all"], **(raw.get(setting) or {})}
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in pairs.items()]


def image_size(setting: str, full: bool) -> tuple[int, tuple[float, float] | None]:
    """(slice size, in-plane spacing or None) for ingest.

    Shenzhen PNGs are 256 x 256 with spacing 1 (PNG has none), so 128 px means
    resampling to spacing 2; the QUBIQ copy is 128 x 128 already (its 256 x 256
    originals are not in it), so it stays at 128 in both sizes.
    """
    if setting == "annotators":
        return 128, None
    return (256, None) if full else (128, (2.0, 2.0))


# --------------------------------------------------------------------------- data

def ingest_once(manifest: Path, shards: Path, size: int, spacing) -> Path:
    from aide_ray.data.ingest import ingest
    from aide_ray.data.preprocess import Preprocessing

    if not (shards / "dataset.json").is_file():
        log(f"ingest {manifest} -> {shards} (size {size}, spacing {spacing})")
        ingest(manifest, shards, Preprocessing(target_spacing=spacing, size=size, normalize="zscore"), overwrite=True)
    return shards


def _counts(manifest: Path) -> str:
    df = pd.read_csv(manifest)
    return ", ".join(f"{s} {df[df['split'] == s]['case_id'].nunique()}" for s in ("train", "val", "test"))


def _shenzhen(data: Path, out: Path, protocol: str, folder: str, **options) -> tuple[Path, Path, pd.DataFrame]:
    """Settings 1 and 3: the clean Shenzhen manifest (70/10/20 by case) and its ``protocol`` copy.

    The copy goes to ``OUT/data/<folder>/manifest.csv``; both are made once and reused.

    Returns:
        (clean manifest, corrupted manifest, the corrupted manifest's train rows).
    """
    from aide_ray.data.manifest import read_manifest
    from aide_ray.data.noise import corrupt_manifest
    from aide_ray.data.recipes import shenzhen_manifest

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    clean = d / "clean.csv"
    if not clean.is_file():
        shenzhen_manifest(data, clean, split_seed=NOISE_SEED)
    corrupted = d / folder / "manifest.csv"
    if not corrupted.is_file():
        corrupt_manifest(clean, corrupted.parent, protocol, NOISE_SEED, overwrite=True, **options)
    train = read_manifest(corrupted)
    return clean, corrupted, train[train["split"] == "train"]


def prepare_noisy(data: Path, out: Path, size: int, spacing) -> dict[str, object]:
    """Clean manifest (70/10/20 by case), pymic-jsrt noisy copy, and both ingested."""
    from aide_ray.data.noise import noisy_label_dice

    clean, noisy, train = _shenzhen(data, out, "pymic-jsrt", "noisy", clean_fraction=0.05)
    dice = noisy_label_dice(train[train["label_kind"] == "lq"])
    note = (f"Cases (train, val, test): {_counts(clean)}. Train labels: pymic-jsrt noise (seed {NOISE_SEED}), "
            f"{int((train['label_kind'] == 'hq').sum())} cases clean, {int((train['label_kind'] == 'lq').sum())} "
            f"noisy, mean Dice of noisy vs clean label {dice.mean():.3f}. Test references: the original masks.")
    d = out / "data"
    return {"train": {"noisy": ingest_once(noisy, d / "shards_noisy", size, spacing),
                      "clean": ingest_once(clean, d / "shards_clean", size, spacing)},
            "reference": clean, "note": note}


def prepare_annotators(data: Path, out: Path, size: int, spacing) -> dict[str, object]:
    """All-rater manifest (70/10/20 by case) and two training manifests: rater 1, a random rater per case."""
    from aide_ray.data.manifest import read_manifest, write_manifest
    from aide_ray.data.recipes import qubiq_manifest

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    every = d / "all_raters.csv"
    if not every.is_file():
        qubiq_manifest(data, every, split_seed=NOISE_SEED, label_kind="hq")
    df = read_manifest(every)
    fit = df[df["split"].isin(["train", "val"])].copy()
    # Training labels are one expert's opinion, so they are the "lq" labels AIDE may correct;
    # validation labels only pick the best checkpoint and are never relabelled.
    fit.loc[fit["split"] == "train", "label_kind"] = "lq"
    raters = sorted(fit["annotator"].unique(), key=lambda s: (len(s), s))
    rng = np.random.default_rng(NOISE_SEED)
    cases = sorted(fit["case_id"].unique())
    pick = dict(zip(cases, rng.choice(raters, size=len(cases))))
    manifests = {"rater1": fit[fit["annotator"] == "rater1"],
                 "random": fit[[pick[c] == a for c, a in zip(fit["case_id"], fit["annotator"])]]}
    train = {}
    for name, table in manifests.items():
        path = d / f"train_{name}.csv"
        if not path.is_file():
            write_manifest(table.reset_index(drop=True), path)
        train[name] = ingest_once(path, d / f"shards_{name}", size, spacing)
    chosen = manifests["random"][manifests["random"]["split"] == "train"]["annotator"].value_counts()
    note = (f"Cases (train, val, test): {_counts(every)}; {len(raters)} raters. Training and validation use one "
            f"label per case: rater1's, or a rater drawn per case (seed {NOISE_SEED}; train draws: "
            + ", ".join(f"{r} {chosen[r]}" for r in sorted(chosen.index, key=lambda s: (len(s), s)))
            + "). Test: one prediction per case scored against each of the 7 raters.")
    return {"train": train, "reference": every, "note": note}


def prepare_limited(data: Path, out: Path, size: int, spacing) -> dict[str, object]:
    """Clean manifest (same split as setting 1) and the 10%-labelled copy; pseudo-labels come later."""
    clean, limited, train = _shenzhen(data, out, "limited", "limited", labelled_fraction=0.1)
    d = out / "data"
    note = (f"Cases (train, val, test): {_counts(clean)}. HQ labels kept for "
            f"{int((train['label_kind'] == 'hq').sum())} train cases (seed {NOISE_SEED}); the other "
            f"{int((train['label_kind'] == 'none').sum())} get LQ pseudo-labels predicted by the same seed's "
            f"`supervised_hq10` model. Test references: the original masks.")
    return {"train": {"hq10": ingest_once(limited, d / "shards_hq10", size, spacing),
                      "clean": ingest_once(clean, d / "shards_clean", size, spacing)},
            "reference": clean, "limited_manifest": limited, "note": note}


_pseudo_locks: dict[int, threading.Lock] = {}
_pseudo_done: set[int] = set()  # seeds whose pseudo-labels this process made (--force makes them once)


def pseudo_label_shards(out: Path, seed: int, prepared: dict, size: int, spacing, force: bool) -> Path | None:
    """Predict the unlabelled 90% with supervised_hq10 (this seed) and ingest them as label_kind lq.

    Both pseudo-label arms of a seed call this, possibly at the same time: the first makes the shards.
    """
    with _pseudo_locks.setdefault(seed, threading.Lock()):
        return _pseudo_label_shards(out, seed, prepared, size, spacing, force)


def _pseudo_label_shards(out: Path, seed: int, prepared: dict, size: int, spacing, force: bool) -> Path | None:
    from aide_ray.data.manifest import read_manifest, write_manifest
    from aide_ray.eval.evaluate import find_prediction

    d = out / "data"
    shards = d / f"shards_pseudo_s{seed}"
    if (shards / "dataset.json").is_file() and (not force or seed in _pseudo_done):
        return shards
    run_dir = out / "train" / run_name("supervised_hq10", seed)
    if not (run_dir / "config.yaml").is_file():
        log(f"pseudo-labels s{seed}: {run_dir} has not finished; skipping the arms that need them")
        return None
    limited = Path(prepared["limited_manifest"])
    pred = out / "pseudo" / f"s{seed}"
    if not pred.is_dir() or force:
        ok = run_stage(out, "pseudo", "supervised_hq10", seed,
                       [*aide_ray_cmd(), "predict", "--checkpoint", str(run_dir), "--input", str(limited),
                        "--split", "train", "--out", str(pred), "--local", "--overwrite"],
                       out / "logs" / f"pseudo_s{seed}.log")
        if not ok:
            return None
    df = read_manifest(limited)
    none = (df["split"] == "train") & (df["label_kind"] == "none")
    for idx in df.index[none]:
        path = find_prediction(pred, df.at[idx, "case_id"])
        if path is None:
            raise FileNotFoundError(f"{pred}: no pseudo-label for case {df.at[idx, 'case_id']}")
        df.at[idx, "label"] = str(path)
        df.at[idx, "label_kind"] = "lq"
    manifest = d / f"pseudo_s{seed}.csv"
    write_manifest(df, manifest)
    if shards.exists():
        shutil.rmtree(shards)
    _pseudo_done.add(seed)
    return ingest_once(manifest, shards, size, spacing)


PREPARE: dict[str, Callable[..., dict]] = {"noisy": prepare_noisy, "annotators": prepare_annotators,
                                           "limited": prepare_limited}


# --------------------------------------------------------------------------- arms

def arm_overrides(overrides: Sequence[str], arm: str) -> list[str]:
    """The ``key=value`` overrides for ``arm``: plain ones, and ``ARM:key=value`` ones naming it."""
    out = []
    for item in overrides:
        scope, sep, rest = item.partition(":")
        if not sep or "=" in scope:
            out.append(item)
        elif scope == arm:
            out.append(rest)
    return out


def train_predict_evaluate(out: Path, spec: SettingSpec, arm_name: str, seed: int, shards: Path, reference: Path,
                           overrides: Sequence[str], force: bool, engine: str = "ray") -> bool:
    arm = spec.arm(arm_name)
    name = run_name(arm_name, seed)
    run_dir, pred, report = out / "train" / name, out / "pred" / name, out / "eval" / name
    if (report / "per_case.csv").is_file() and not force:
        log(f"{name}: already evaluated ({report}); skipping")
        return True
    if force or not (run_dir / "config.yaml").is_file():
        # A half-written run folder would make Ray Train restore a stale state; start clean.
        if run_dir.exists():
            shutil.rmtree(run_dir)
        trainer = [*aide_ray_cmd(), "train"] if engine == "ray" else [sys.executable, str(REPO / "jobs" / "train_plain.py")]
        cmd = [*trainer, "--config", str(EXP_DIR / arm.config), f"data.shards={shards}",
               f"seed={seed}", f"run.storage_path={out / 'train'}", f"run.name={name}",
               *arm_overrides(overrides, arm_name)]
        if arm.init_from:
            cmd.append(f"model.init_from={out / 'train' / run_name(arm.init_from, seed)}")
        if not run_stage(out, "train", arm_name, seed, cmd, out / "logs" / f"train_{name}.log"):
            return False
    if not run_stage(out, "predict", arm_name, seed,
                     [*aide_ray_cmd(), "predict", "--checkpoint", str(run_dir), "--input", str(reference),
                      "--split", "test", "--out", str(pred), "--local", "--overwrite"],
                     out / "logs" / f"predict_{name}.log"):
        return False
    if not run_stage(out, "evaluate", arm_name, seed,
                     [*aide_ray_cmd(), "evaluate", "--pred", str(pred), "--ref", str(reference), "--split", "test",
                      "--out", str(report), "--overwrite"],
                     out / "logs" / f"evaluate_{name}.log"):
        return False
    if spec.arm(arm_name).name.startswith("aide"):
        run_stage(out, "figures", arm_name, seed, [*aide_ray_cmd(), "figures", str(run_dir)],
                  out / "logs" / f"figures_{name}.log")
    return True


def write_experiment(out: Path, args: argparse.Namespace, spec: SettingSpec, prepared: dict, size, spacing) -> None:
    path = out / EXPERIMENT_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    seeds = sorted(set(old.get("seeds", [])) | set(args.seeds))
    arms = set(old.get("arms", [])) | set(args.arms)
    arms = [a.name for a in spec.arms if a.name in arms]
    data = os.path.relpath(args.data) if not os.path.isabs(args.data) else args.data
    command = (f"python jobs/experiments/run.py {spec.name} --data {data} --out {args.out} "
               f"--seeds {' '.join(map(str, seeds))}" + (" --full" if args.full else "")
               + (f" --engine {args.engine}" if args.engine != "ray" else "")
               + (f" --set {' '.join(args.set)}" if args.set else ""))
    info = {"setting": spec.name, "data": str(Path(args.data).resolve()), "seeds": seeds, "arms": arms,
            "full": bool(args.full), "engine": args.engine, "command": command,
            "size_note": f"{size} x {size} inputs" + (f" (resampled to spacing {spacing[0]:g} px)" if spacing else ""),
            "data_note": prepared["note"], "overrides": list(args.set)}
    path.write_text(json.dumps(info, indent=2) + "\n")


def run_setting(args: argparse.Namespace) -> int:
    spec = SETTINGS[args.setting]
    out = Path(args.out).resolve()
    data = Path(args.data).resolve()
    if not data.is_dir():
        print(f"run.py: error: --data {data} is not a folder", file=sys.stderr)
        return 2
    arms = args.arms or [a.name for a in spec.arms]
    for arm in arms:
        spec.arm(arm)  # unknown arm names fail before any work
    for item in args.set:
        scope, sep, _ = item.partition(":")
        if sep and "=" not in scope:
            spec.arm(scope)  # so does an ARM:key=value naming no arm
    args.arms = arms
    size, spacing = image_size(spec.name, args.full)
    overrides = (load_full_overrides(spec.name) if args.full else []) + list(args.set)
    out.mkdir(parents=True, exist_ok=True)
    prepared = PREPARE[spec.name](data, out, size, spacing)
    write_experiment(out, args, spec, prepared, size, spacing)
    reference = Path(prepared["reference"])

    jobs: list[tuple[str, int, Callable[[], Path | None]]] = []
    for seed in args.seeds:
        for arm in arms:
            key = spec.arm(arm).data
            if key == "pseudo":
                getter = (lambda s=seed: pseudo_label_shards(out, s, prepared, size, spacing, args.force))
            else:
                getter = (lambda k=key: Path(prepared["train"][k]))
            jobs.append((arm, seed, getter))

    def one(job) -> bool:
        arm, seed, getter = job
        shards = getter()
        if shards is None:
            return False
        return train_predict_evaluate(out, spec, arm, seed, shards, reference, overrides, args.force, args.engine)

    # An arm that needs another arm's run of its seed (setting 3's pseudo-labels come from the 10% model;
    # model.init_from) waits for it. Jobs start in submission order, so every job waited for is running
    # or done before a job that waits for it starts.
    def needs(arm: str) -> str | None:
        return "supervised_hq10" if spec.arm(arm).data == "pseudo" else spec.arm(arm).init_from

    first = [j for j in jobs if needs(j[0]) is None]
    later = [j for j in jobs if needs(j[0]) is not None]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {(arm, seed): pool.submit(one, (arm, seed, getter)) for arm, seed, getter in first}

        def after_needed(job) -> bool:
            needed = futures.get((needs(job[0]), job[1]))
            if needed is not None:
                needed.result()
            return one(job)

        futures.update({(arm, seed): pool.submit(after_needed, (arm, seed, getter)) for arm, seed, getter in later})
        results = [futures[(arm, seed)].result() for arm, seed, _ in first + later]
    failed = [run_name(a, s) for (a, s, _), ok in zip(first + later, results) if not ok]
    log(f"{spec.name}: {len(results) - len(failed)} of {len(results)} arm runs finished"
        + (f"; failed or skipped: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------- report

def run_report(args: argparse.Namespace) -> int:
    preamble = (EXP_DIR / "results_preamble.md").read_text()
    postscript = (EXP_DIR / "results_postscript.md").read_text()
    cmd = "python jobs/experiments/run.py report " + " ".join(args.experiments) + f" --out {args.out}"
    if args.figures:
        cmd += " --figures " + " ".join(args.figures)
    preamble = preamble.replace("{command}", cmd)
    figure_runs = [(exp, run, f"{Path(exp).name} {run}") for exp, run in
                   (item.split(":", 1) for item in args.figures)]
    path = write_results(args.experiments, args.out, preamble=preamble, postscript=postscript,
                         figure_runs=figure_runs)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in SETTINGS.items():
        p = sub.add_parser(name, help=spec.title)
        p.add_argument("--data", required=True, help="dataset folder (see its SOURCE.md)")
        p.add_argument("--out", required=True, help="experiment folder (data, runs, predictions, reports)")
        p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
        p.add_argument("--arms", nargs="+", choices=[a.name for a in spec.arms], help="arms to run (default: all)")
        p.add_argument("--full", action="store_true", help="the paper's GPU size (jobs/experiments/full.yaml)")
        p.add_argument("--set", nargs="*", default=[], metavar="[ARM:]KEY=VALUE",
                       help="extra overrides for every arm, or with ARM: for that arm only")
        p.add_argument("--engine", choices=["ray", "plain"], default="ray",
                       help="ray: `aide-ray train` (default); plain: jobs/train_plain.py, one process, no Ray")
        p.add_argument("--parallel", type=int, default=1, help="arms trained at the same time (default: 1)")
        p.add_argument("--force", action="store_true", help="redo arms that already finished")
        p.set_defaults(setting=name)
    p = sub.add_parser("report", help="write docs/results.md from experiment folders")
    p.add_argument("experiments", nargs="+", help="experiment folders (OUT of the settings)")
    p.add_argument("--out", default="docs/results.md", help="Markdown file (default: docs/results.md)")
    p.add_argument("--figures", nargs="*", default=[], metavar="EXP:ARM_sSEED",
                   help="runs whose `aide-ray figures` PNGs are copied next to --out and shown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_report(args) if args.command == "report" else run_setting(args)


if __name__ == "__main__":
    sys.exit(main())
