"""A run's time outside its epochs (start-up, checkpoints, wind-down), local backend and Ray backend, and where it goes.

Each backend trains the same config for ``--epochs`` (2) epochs, in this process
(the local backend, :func:`aide_ray.engine.local.train_local`) and on an embedded
Ray started by the run itself, as ``aide-ray train`` does
(:func:`aide_ray.distributed.trainer.run_training`, one Train worker). The figure
is ``startup_seconds = wall time of the run call - sum of its epochs' seconds``
(an epoch's ``seconds`` in ``metrics.csv`` covers its training, scoring,
relabelling and validation passes). Python's imports happen before the call and
are printed apart.

Where the time goes, without changing the run: the driver-side calls are timed
by wrapping them for the run's duration (preparation, Ray start, dataset planning
with the one-off decode into the object store, the label-store actor, the
Train fit, the end of the run with its report page), and inside a fit the
checkpoint folders' names, which are their creation times (Ray Train names a
checkpoint when rank 0 reports it, right after writing it), split the worker
side: worker group start and loop set-up before the first epoch, checkpoint
persistence between epochs, and the wind-down after the last. The scoring and
validation passes are inside the epochs (``seconds - train_seconds``), printed
beside. Then a Ray task reports the niceness of Ray's worker processes. Last, on the
same Ray, a fit that trains nothing (the run's worker resources, a 64-row materialised
dataset read once through the runs' ``ExactSplits``, one report) gives Ray's own floor:
``ray_floor_seconds`` = Ray start + that fit, and ``startup_above_floor_seconds``, the
part of the run's start-up that is ours.

Data: a tiny generated dataset by default (demo data, 12 cases x 4 slices at 64 px),
or ``--data SHARDS``, an ingested folder. Run from the repository root:
``python benchmarks/startup.py [--data SHARDS] [--backend both|local|ray]``;
the last line is ``startup_seconds=VALUE`` (the Ray backend's, or the only one run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pandas as pd

from aide_ray.config import load_config
from aide_ray.runs.folder import CHECKPOINT_PREFIX, checkpoint_dirs, checkpoint_metrics


class Clock:
    """Wall-clock spans of wrapped calls, by label."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def wrap(self, stack: contextlib.ExitStack, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans[label].append((start, time.time()))

        stack.enter_context(mock.patch.object(owner, attr, timed))

    def total(self, label: str) -> float:
        return sum(end - start for start, end in self.spans[label])


def _checkpoint_times(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, creation time) of each checkpoint of a run folder, from its name, in time order."""
    out = []
    for path in checkpoint_dirs(run_dir):
        stamp = Path(path).name[len(CHECKPOINT_PREFIX):]
        out.append((int(checkpoint_metrics(path)["epoch"]),
                    datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()))
    return sorted(out, key=lambda item: item[1])


def _run(clock: Clock, train: Callable[[], Any]) -> tuple[float, float, float, pd.DataFrame, Any]:
    """(wall s, start, end, history, outcome) of one run call."""
    start = time.time()
    outcome = train()
    end = time.time()
    return end - start, start, end, outcome.history, outcome


def _report(backend: str, wall: float, history: pd.DataFrame, parts: list[tuple[str, float]]) -> float:
    epochs = float(history["seconds"].sum())
    train = float(history["train_seconds"].sum())
    outside = wall - epochs
    print(f"\n{backend}: run {wall:.2f} s, of which {len(history)} epochs {epochs:.2f} s (training passes "
          f"{train:.2f} s, scoring + validation passes {epochs - train:.2f} s) -> outside the epochs {outside:.2f} s",
          flush=True)
    for label, seconds in parts:
        print(f"  {label:<68} {seconds:7.2f} s", flush=True)
    print(f"  {'rest (not timed above)':<68} {outside - sum(s for _, s in parts):7.2f} s", flush=True)
    return outside


def run_local(cfg) -> float:
    import aide_ray.engine.local as local
    import aide_ray.engine.loop as loop
    import aide_ray.engine.report as report

    clock = Clock()
    with contextlib.ExitStack() as stack:
        clock.wrap(stack, local, "prepare_run", "prepare")
        clock.wrap(stack, local.LocalBackend, "__init__", "rows")
        clock.wrap(stack, loop, "_build", "build")
        clock.wrap(stack, loop, "_write_checkpoint", "ckpt_write")
        clock.wrap(stack, local.LocalBackend, "report", "ckpt_copy")
        clock.wrap(stack, local, "finish_run", "finish")
        clock.wrap(stack, report, "write_run_report", "page")
        wall, *_, history, _ = _run(clock, lambda: local.train_local(cfg))
    return _report("local backend", wall, history, [
        ("prepare_run (shards verified, run folder, init_from check)", clock.total("prepare")),
        ("rows read and decoded into memory", clock.total("rows")),
        ("method and nets built", clock.total("build")),
        ("checkpoints written (state.pt, artifacts, files.json)", clock.total("ckpt_write")),
        ("checkpoints copied into the run folder, pruned", clock.total("ckpt_copy")),
        ("finish_run: best pointer, artifacts, config.yaml", clock.total("finish") - clock.total("page")),
        ("  of finish_run: the report page (figures drawn)", clock.total("page")),
    ])


def run_ray(cfg) -> float:
    started = time.time()
    import ray
    from ray.train.torch import TorchTrainer

    import aide_ray.distributed.trainer as trainer
    import aide_ray.engine.report as report

    print(f"importing Ray and the Ray layer: {time.time() - started:.2f} s (before the run call, not counted)")
    clock = Clock()
    with contextlib.ExitStack() as stack:
        for attr, label in [("prepare_run", "prepare"), ("init_ray", "ray"), ("build_datasets", "data"),
                            ("create_label_store_actor", "actor"), ("finish_run", "finish")]:
            clock.wrap(stack, trainer, attr, label)
        clock.wrap(stack, report, "write_run_report", "page")
        clock.wrap(stack, TorchTrainer, "fit", "fit")
        wall, _, _, history, outcome = _run(clock, lambda: trainer.run_training(cfg))
    (fit_start, fit_end), = clock.spans["fit"]
    seconds = dict(zip(history["epoch"].astype(int), history["seconds"].astype(float)))
    marks = _checkpoint_times(Path(outcome.run_dir))
    before = between = after = float("nan")
    if len(marks) == len(seconds):
        before = marks[0][1] - seconds[marks[0][0]] - fit_start
        between = sum(t - seconds[e] - marks[i][1] for i, (e, t) in enumerate(marks[1:]))
        after = fit_end - marks[-1][1]
    outside = _report("Ray backend (embedded Ray, 1 Train worker)", wall, history, [
        ("prepare_run (shards verified, run folder, init_from check)", clock.total("prepare")),
        ("Ray start (init_ray: GCS, raylet, dashboard, watcher)", clock.total("ray")),
        ("dataset planning (build_datasets, the one-off decode into the store)", clock.total("data")),
        ("label-store actor created", clock.total("actor")),
        ("fit: worker group start, loop set-up, first checkpoint written", before),
        ("fit: between epochs (checkpoint persisted, next one written)", between),
        ("fit: after the last epoch (checkpoint persisted, workers stopped)", after),
        ("finish_run: best pointer, artifacts, config.yaml", clock.total("finish") - clock.total("page")),
        ("  of finish_run: the report page (figures drawn)", clock.total("page")),
    ])

    @ray.remote(num_cpus=0)
    def probe() -> tuple[int, int, str]:
        autogroup = Path("/proc/self/autogroup")
        return os.nice(0), os.getsid(0), autogroup.read_text().strip() if autogroup.exists() else "-"

    nice, sid, group = ray.get(probe.remote())
    print(f"Ray worker processes: nice {nice}, session {sid}, {group} | this driver: nice {os.nice(0)}, "
          f"session {os.getsid(0)}", flush=True)
    print(f"ray_worker_nice={nice}")
    floor = clock.total("ray") + _empty_fit(cfg)
    print(f"Ray's own floor: Ray start + a fit that trains nothing (one worker reads a 64-row dataset once and "
          f"reports): {floor:.2f} s; this run's time outside its epochs above it: {outside - floor:.2f} s")
    print(f"ray_floor_seconds={floor:.2f}")
    print(f"startup_above_floor_seconds={outside - floor:.2f}")
    ray.shutdown()
    return outside


def _read_and_report() -> None:
    import ray.train  # noqa: PLC0415

    rows = sum(len(b["id"]) for b in ray.train.get_dataset_shard("train").iter_batches(batch_size=8))
    ray.train.report({"rows": rows})


def _empty_fit(cfg) -> float:
    """Seconds of a Ray Train fit on the run's Ray that trains nothing: the same worker resources, one small
    materialised dataset read through the runs' ``ExactSplits``, one report. What no run can start below."""
    import ray.data  # noqa: PLC0415
    from ray.train import RunConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from aide_ray.distributed.trainer import ExactSplits, scaling_config  # noqa: PLC0415

    dataset = ray.data.range(64).materialize()
    started = time.perf_counter()
    TorchTrainer(_read_and_report, scaling_config=scaling_config(cfg), datasets={"train": dataset},
                 dataset_config=ExactSplits({}),
                 run_config=RunConfig(name="floor", storage_path=tempfile.mkdtemp(prefix="aide-ray-floor-"))).fit()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="an ingested shards folder (default: tiny generated demo data)")
    parser.add_argument("--backend", default="both", choices=["both", "local", "ray"])
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (cpus_per_worker)")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="aide-ray-startup-"))
    results: dict[str, float] = {}
    try:
        if args.data:
            shards = args.data
        else:
            from _common import prepare_shards  # noqa: PLC0415  (imports Ray: only when generating)
            shards = prepare_shards(tmp / "data", cases=12, slices=4, size=64)
        common = [f"data.shards={shards}", f"method={args.method}", f"epochs={args.epochs}", "workers=1",
                  f"cpus_per_worker={args.threads}", f"batch_size={args.batch_size}",
                  f"model.base_width={args.base_width}", f"run.checkpoints_to_keep={args.epochs}",
                  f"run.storage_path={tmp / 'runs'}", *args.overrides]
        if args.backend in ("both", "local"):
            results["local"] = run_local(load_config(None, [*common, "run.name=local"]))
        if args.backend in ("both", "ray"):
            results["ray"] = run_ray(load_config(None, [*common, "run.name=ray"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for backend, value in results.items():
        print(f"startup_seconds_{backend}={value:.2f}")
    print(f"startup_seconds={results.get('ray', results.get('local')):.2f}")
    return results


if __name__ == "__main__":
    main()
