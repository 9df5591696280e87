"""The driver of a setting: every arm and seed through train -> predict -> evaluate (-> figures).

Each stage is an ``aide-ray`` command run as a subprocess
(:func:`aide_ray.experiments.stages.run_stage`): the arm's training config
(written from the catalogue to ``OUT/configs/<arm>.yaml``) is trained, the
test split is predicted with the run's best checkpoint and evaluated against
the HQ test masks, and AIDE arms get their figures. Finished steps are skipped
on a rerun (an arm with an evaluation; a training run with its config.yaml), so
an interrupted setting continues where it stopped. Arms run in threads
(``--parallel``); an arm that needs another arm's run of its seed (``init_from``,
pseudo-labels) waits for it. This module decides the order and the skips; the
data comes from :mod:`aide_ray.experiments.prepare`.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import yaml

from aide_ray._internal.io import atomic_write_text
from aide_ray.config import load_config
from aide_ray.exceptions import InputError
from aide_ray.experiments.catalogue import Setting, load_full_size
from aide_ray.experiments.layout import (EXPERIMENT_FILE, PER_CASE_FILE, config_file, eval_dir, log_file,
                                         pred_dir, run_name, train_dir)
from aide_ray.experiments.prepare import PrepareContext, Prepared, prepare_setting, recipe_of
from aide_ray.experiments.stages import aide_ray_cmd, log, run_stage
from aide_ray.runs.folder import CONFIG_FILE

__all__ = ["BACKENDS", "RunOptions", "arm_overrides", "run_setting"]

BACKENDS = ("ray", "local")  # `aide-ray train --backend`


@dataclass(frozen=True)
class RunOptions:
    """The command line of one setting (``jobs/experiments/run.py SETTING ...``).

    Attributes:
        data: dataset folder, as typed (it is written into experiment.json's command).
        out: experiment folder, as typed.
        seeds: training seeds.
        arms: arms to run; empty: all.
        full: the paper's GPU size.
        overrides: ``--set`` items: ``key=value`` for every arm, ``ARM:key=value`` for one.
        backend: ``aide-ray train --backend``.
        parallel: arm runs at the same time.
        force: redo finished arms.
    """

    data: str
    out: str
    seeds: tuple[int, ...] = (0,)
    arms: tuple[str, ...] = ()
    full: bool = False
    overrides: tuple[str, ...] = ()
    backend: str = "ray"
    parallel: int = 1
    force: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.parallel < 1:
            raise InputError(f"--parallel must be at least 1, got {self.parallel}")


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


def _write_arm_config(setting: Setting, arm: str, path: Path) -> Path:
    header = (f"# Arm {arm!r} of setting {setting.name!r} at CPU size, written by aide_ray.experiments from\n"
              f"# {setting.source}; edit that file, not this one. --full and --set apply on top.\n")
    atomic_write_text(path, header + yaml.safe_dump(setting.arm_config(arm), sort_keys=False))
    return path


def _train_predict_evaluate(out: Path, setting: Setting, arm_name: str, seed: int, shards: Path, reference: Path,
                            overrides: Sequence[str], opts: RunOptions) -> bool:
    arm = setting.arm(arm_name)
    name = run_name(arm_name, seed)
    run_dir, pred, report = train_dir(out, arm_name, seed), pred_dir(out, arm_name, seed), eval_dir(out, arm_name, seed)
    if (report / PER_CASE_FILE).is_file() and not opts.force:
        log(f"{name}: already evaluated ({report}); skipping")
        return True
    if opts.force or not (run_dir / CONFIG_FILE).is_file():
        # A half-written run folder would make Ray Train restore a stale state; start clean.
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cmd = [*aide_ray_cmd(), "train", "--backend", opts.backend, "--config", str(config_file(out, arm_name)),
               f"data.shards={shards}", f"seed={seed}", f"run.storage_path={out / 'train'}", f"run.name={name}",
               *arm_overrides(overrides, arm_name)]
        if arm.init_from:
            cmd.append(f"model.init_from={train_dir(out, arm.init_from, seed)}")
        if not run_stage(out, "train", arm_name, seed, cmd, log_file(out, "train", name)):
            return False
    if not run_stage(out, "predict", arm_name, seed,
                     [*aide_ray_cmd(), "predict", "--checkpoint", str(run_dir), "--input", str(reference),
                      "--split", "test", "--out", str(pred), "--local", "--overwrite"],
                     log_file(out, "predict", name)):
        return False
    if not run_stage(out, "evaluate", arm_name, seed,
                     [*aide_ray_cmd(), "evaluate", "--pred", str(pred), "--ref", str(reference), "--split", "test",
                      "--out", str(report), "--overwrite"],
                     log_file(out, "evaluate", name)):
        return False
    if arm_name.startswith("aide"):
        run_stage(out, "figures", arm_name, seed, [*aide_ray_cmd(), "figures", str(run_dir)],
                  log_file(out, "figures", name))
    return True


def _write_experiment(out: Path, setting: Setting, opts: RunOptions, prepared: Prepared) -> None:
    """``OUT/experiment.json``; seeds and arms accumulate over reruns with other ``--seeds`` and ``--arms``."""
    path = out / EXPERIMENT_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    seeds = sorted(set(old.get("seeds", [])) | set(opts.seeds))
    arms = set(old.get("arms", [])) | set(opts.arms)
    arms = [a for a in setting.arm_names if a in arms]
    data = os.path.relpath(opts.data) if not os.path.isabs(opts.data) else opts.data
    command = (f"python jobs/experiments/run.py {setting.name} --data {data} --out {opts.out} "
               f"--seeds {' '.join(map(str, seeds))}" + (" --full" if opts.full else "")
               + (f" --backend {opts.backend}" if opts.backend != "ray" else "")
               + (f" --set {' '.join(opts.overrides)}" if opts.overrides else ""))
    inputs = setting.inputs_at(opts.full)
    spacing = inputs.spacing
    info = {"setting": setting.name, "data": str(Path(opts.data).resolve()), "seeds": seeds, "arms": arms,
            "full": bool(opts.full), "backend": opts.backend, "command": command,
            "size_note": f"{inputs.size} x {inputs.size} inputs"
                         + (f" (resampled to spacing {spacing[0]:g} px)" if spacing else ""),
            "data_note": prepared.note, "overrides": list(opts.overrides)}
    path.write_text(json.dumps(info, indent=2) + "\n")


def _order(jobs: list[tuple[str, int]], needs: dict[str, tuple[str, ...]]) -> list[tuple[str, int]]:
    """Jobs sorted (stably) by how deep their chain of needed arms is, so that a job comes after those it needs.

    Jobs start in submission order, so every job waited for is running or done before a job that waits
    for it starts, whatever the number of threads.
    """
    depth: dict[str, int] = {}

    def depth_of(arm: str, chain: tuple[str, ...] = ()) -> int:
        if arm in chain:
            raise InputError(f"arms wait for each other in a cycle: {' -> '.join([*chain, arm])}")
        if arm not in depth:
            depth[arm] = 1 + max((depth_of(n, (*chain, arm)) for n in needs[arm]), default=-1)
        return depth[arm]

    return sorted(jobs, key=lambda job: depth_of(job[0]))


def run_setting(setting: Setting, opts: RunOptions) -> int:
    """Run the selected arms and seeds of ``setting``; write ``OUT/experiment.json``.

    Returns:
        0 when every arm run finished, else 1 (the failed or skipped runs are logged).
    Raises:
        InputError: an unknown arm (in ``arms`` or an ``ARM:key=value``) or a missing data folder,
            before any work.
        ConfigError: an arm's config with the overrides is invalid, before any data work.
    """
    out = Path(opts.out).resolve()
    data = Path(opts.data).resolve()
    if not data.is_dir():
        raise InputError(f"--data {data} is not a folder")
    arms = list(opts.arms) or setting.arm_names
    for arm in arms:
        setting.arm(arm)  # unknown arm names fail before any work
    for item in opts.overrides:
        scope, sep, _ = item.partition(":")
        if sep and "=" not in scope:
            setting.arm(scope)  # so does an ARM:key=value naming no arm
    recipe_of(setting)
    opts = replace(opts, arms=tuple(arms))
    overrides = (setting.full_overrides(load_full_size()) if opts.full else []) + list(opts.overrides)
    out.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        # Every arm's config is checked with its overrides before any data is made.
        load_config(_write_arm_config(setting, arm, config_file(out, arm)), arm_overrides(overrides, arm))
    prepared = prepare_setting(setting, PrepareContext(data, out, setting.inputs_at(opts.full), opts.force))
    _write_experiment(out, setting, opts, prepared)

    def needs(arm: str) -> tuple[str, ...]:
        later = prepared.later.get(setting.arm(arm).data)
        waits = (later.after_arm,) if later else ()
        init = setting.arm(arm).init_from
        return waits + ((init,) if init and init not in waits else ())

    waits_for = {a: needs(a) for a in setting.arm_names}
    jobs = _order([(arm, seed) for seed in opts.seeds for arm in arms], waits_for)
    futures: dict[tuple[str, int], Future] = {}

    def one(arm: str, seed: int) -> bool:
        for needed in waits_for[arm]:
            if (needed, seed) in futures:
                futures[(needed, seed)].result()
        later = prepared.later.get(setting.arm(arm).data)
        shards = later.make(seed) if later else prepared.train[setting.arm(arm).data]
        if shards is None:
            return False
        return _train_predict_evaluate(out, setting, arm, seed, shards, prepared.reference, overrides, opts)

    with ThreadPoolExecutor(max_workers=opts.parallel) as pool:
        for arm, seed in jobs:
            futures[(arm, seed)] = pool.submit(one, arm, seed)
        results = [futures[job].result() for job in jobs]
    failed = [run_name(a, s) for (a, s), ok in zip(jobs, results) if not ok]
    log(f"{setting.name}: {len(results) - len(failed)} of {len(results)} arm runs finished"
        + (f"; failed or skipped: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
