"""Training steps on one GPU: slices/s of supervised and AIDE, their ratio and GPU memory, fp32 against bf16.

The GPU plan of docs/performance.md. For each setting (``--settings``; default
fp32, fp32 + channels-last, bf16, bf16 + channels-last) the script builds fresh
nets on the GPU and times the engine's own step
(:func:`aide_ray.engine.step.train_one_step` with ``precision`` and
``channels_last``, the nets through :func:`~aide_ray.engine.step.to_channels_last`,
as the loop does) on one fixed batch (16 x 1 x 256 x 256, base width 32 by
default): an AIDE step against two supervised steps on the same batch,
alternated, wall time after ``torch.cuda.synchronize`` (the timing of
``benchmarks/aide_step_cost.py --device cuda``), medians after warm-up. Then one
step of each with the peak memory statistics reset: the GPU memory a training
process needs (nets, Adam states, activations; the AIDE figure holds both twins).

Printed per setting (suffix ``fp32``, ``fp32_cl``, ``bf16``, ``bf16_cl``)::

    gpu_slices_per_s_supervised_<setting>=   batch / one supervised step
    gpu_slices_per_s_aide_<setting>=         batch / one AIDE step (two nets trained)
    gpu_aide_step_ratio_<setting>=           AIDE step / two supervised steps
    gpu_memory_gib_<setting>=                peak GPU memory of an AIDE step
    gpu_memory_gib_supervised_<setting>=     peak GPU memory of a supervised step

and last ``gpu_bf16_speedup_aide=`` (AIDE slices/s of the last setting over the
first). Runs in about a minute on one H100 (well within five), and refuses to
run without a CUDA device unless ``--device cpu`` is given (a smoke test of the
script on tiny sizes: ``--device cpu --size 32 --base-width 4 --batch-size 2
--warmup 0 --reps 1``).

Run from the repository root: ``python benchmarks/gpu_step.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from aide_step_cost import _batch, _time

from aide_ray.config import load_config
from aide_ray.engine.step import make_optimizers, to_channels_last, train_one_step
from aide_ray.methods.aide import Aide
from aide_ray.methods.base import Batch
from aide_ray.methods.supervised import Supervised

SETTINGS = {"fp32": ("fp32", False), "fp32_cl": ("fp32", True), "bf16": ("bf16", False), "bf16_cl": ("bf16", True)}


def _nets(method, device: torch.device, channels_last: bool):
    nets = {name: net.to(device) for name, net in method.build_nets().items()}
    if channels_last:
        nets = {name: to_channels_last(net) for name, net in nets.items()}
    return nets


def _peak_gib(step, device: torch.device) -> float:
    """Peak GPU memory (GiB) while ``step`` runs, the memory already held included."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def measure(setting: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One setting's figures; nets, optimisers and the batch are fresh and freed afterwards."""
    precision, channels_last = SETTINGS[setting]
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.base_width={args.base_width}", f"batch_size={args.batch_size}",
                             f"precision={precision}", f"channels_last={str(channels_last).lower()}"])
    batch = _batch(args.batch_size, args.size, torch.Generator().manual_seed(0)).to(device)
    sup_batch = Batch(batch.image, batch.labels[:, :1], batch.labelled, batch.hq, batch.sample_index)
    kwargs = {"precision": cfg.precision, "channels_last": cfg.channels_last}

    aide = Aide.from_config(cfg, 1)
    aide_nets = _nets(aide, device, channels_last)
    aide_opts, _ = make_optimizers(cfg.optim, aide_nets, aide.trained_nets)
    sup = Supervised.from_config(cfg, 1)
    sup_runs = []
    for _ in range(2):
        nets = _nets(sup, device, channels_last)
        sup_runs.append((nets, make_optimizers(cfg.optim, nets, sup.trained_nets)[0]))

    def aide_step() -> None:
        train_one_step(aide, aide_nets, aide_opts, batch, args.epoch, **kwargs)

    def one_supervised() -> None:
        nets, opts = sup_runs[0]
        train_one_step(sup, nets, opts, sup_batch, args.epoch, **kwargs)

    def supervised_pair() -> None:
        for nets, opts in sup_runs:
            train_one_step(sup, nets, opts, sup_batch, args.epoch, **kwargs)

    for _ in range(args.warmup):
        aide_step()
        supervised_pair()
    aide_t, sup_t = [], []
    for rep in range(args.reps):  # alternated, so that drifts (clocks, other work) affect both sides alike
        first, second = (supervised_pair, aide_step) if rep % 2 else (aide_step, supervised_pair)
        a, b = _time(first, device)[0], _time(second, device)[0]
        aide_t.append(b if rep % 2 else a)
        sup_t.append(a if rep % 2 else b)
    aide_s, pair_s = statistics.median(aide_t), statistics.median(sup_t)
    memory_aide = _peak_gib(aide_step, device)
    del aide_nets, aide_opts, sup_runs[1:]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory_sup = _peak_gib(one_supervised, device)
    return {"slices_per_s_supervised": 2 * args.batch_size / pair_s, "slices_per_s_aide": args.batch_size / aide_s,
            "aide_step_ratio": aide_s / pair_s, "memory_gib": memory_aide, "memory_gib_supervised": memory_sup,
            "aide_step_s": aide_s, "two_supervised_steps_s": pair_s}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="image height = width (multiple of 16)")
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions of each side per setting")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions of each side per setting")
    parser.add_argument("--epoch", type=int, default=30, help="epoch passed to the steps (AIDE's ramp r = 1)")
    parser.add_argument("--settings", default="fp32,fp32_cl,bf16,bf16_cl",
                        help=f"comma-separated, of {list(SETTINGS)}")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of the script only)")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        parser.error(f"--settings must name some of {list(SETTINGS)}, got {args.settings!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_step.py measures a GPU, and torch {torch.__version__} sees no CUDA device here "
                 f"(torch.cuda.is_available() is False; a CPU build of torch, or no GPU): run it on a machine "
                 f"with one, after installing a CUDA build of torch (README.md)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"config: device={name} torch={torch.__version__} batch={args.batch_size} size={args.size} "
          f"base_width={args.base_width} warmup={args.warmup} reps={args.reps} settings={settings}", flush=True)
    started = time.perf_counter()
    results = {}
    for setting in settings:
        results[setting] = r = measure(setting, args, device)
        print(f"{setting}: AIDE step {r['aide_step_s'] * 1e3:.1f} ms, two supervised steps "
              f"{r['two_supervised_steps_s'] * 1e3:.1f} ms", flush=True)
        for key in ("slices_per_s_supervised", "slices_per_s_aide", "aide_step_ratio", "memory_gib",
                    "memory_gib_supervised"):
            print(f"gpu_{key}_{setting}={r[key]:.3f}", flush=True)
    print(f"seconds={time.perf_counter() - started:.1f}")
    first, last = settings[0], settings[-1]
    print(f"AIDE slices/s of {last} over {first}:")
    print(f"gpu_bf16_speedup_aide={results[last]['slices_per_s_aide'] / results[first]['slices_per_s_aide']:.3f}")
    return results


if __name__ == "__main__":
    main()
