"""Cost of one AIDE training step relative to training two supervised U-Nets on the same batch.

AIDE trains two nets like two independent supervised runs would, plus, per net,
no-grad eval-mode forward passes over K augmented copies of the rows its twin
did not select (half the batch) and the warps around them. This script measures that overhead on the CPU with one
fixed thread count: the same batch (8 x 1 x 128 x 128, base width 16) goes
through ``train_one_step`` with :class:`Aide` and through ``train_one_step``
with two :class:`Supervised` instances, alternating the two so that machine
load affects both alike; after warm-up the medians of the repetitions are
compared. The reported ratio uses process CPU time: with one thread it is the
work done, and unlike wall-clock time it does not grow when other processes
share the cores (on a quiet machine the two ratios agree; both are printed).
Target: ratio <= 2.6 (the ideal, counting a backward pass as two forwards, is
(3 + K / 2) / 3 = 1.67 for K = 4 and half the batch selected).

``--device cuda`` measures the same on a GPU (``--size 256 --base-width 64`` is
the paper's size); there the ratio uses wall time after ``torch.cuda.synchronize``.

Run from the repository root: ``python benchmarks/aide_step_cost.py``. The
last output line is ``aide_step_ratio=VALUE``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aide_ray.config import load_config
from aide_ray.engine.step import make_optimizers, train_one_step
from aide_ray.methods.aide import Aide
from aide_ray.methods.base import Batch
from aide_ray.methods.supervised import Supervised
from aide_ray.nn.augment import default_rows_per_pass


def _batch(batch_size: int, size: int, generator: torch.Generator) -> Batch:
    image = torch.randn(batch_size, 1, size, size, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).long()
    labels = disc.expand(batch_size, 2, size, size).clone()
    return Batch(image=image + disc[None, None].float(), labels=labels,
                 labelled=torch.ones(batch_size, dtype=torch.bool), hq=torch.zeros(batch_size, dtype=torch.bool),
                 sample_index=torch.arange(batch_size))


def _time(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, the device's queued work included."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image height = width (multiple of 16)")
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions of each side")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each side")
    parser.add_argument("--epoch", type=int, default=30, help="epoch passed to the steps (ramp r = 1 by default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for both sides, e.g. aide.num_augmentations=1")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.base_width={args.base_width}", f"batch_size={args.batch_size}", *args.overrides])
    batch = _batch(args.batch_size, args.size, torch.Generator().manual_seed(0)).to(device)

    aide = Aide.from_config(cfg, 1)
    aide_nets = {name: net.to(device) for name, net in aide.build_nets().items()}
    aide_opts, _ = make_optimizers(cfg.optim, aide_nets, aide.trained_nets)

    sup = Supervised.from_config(cfg, 1)
    sup_runs = []
    for _ in range(2):
        nets = {name: net.to(device) for name, net in sup.build_nets().items()}
        sup_runs.append((nets, make_optimizers(cfg.optim, nets, sup.trained_nets)[0]))
    sup_batch = Batch(batch.image, batch.labels[:, :1], batch.labelled, batch.hq, batch.sample_index)

    def aide_step() -> None:
        train_one_step(aide, aide_nets, aide_opts, batch, args.epoch)

    def supervised_pair() -> None:
        for nets, opts in sup_runs:
            train_one_step(sup, nets, opts, sup_batch, args.epoch)

    for _ in range(args.warmup):
        aide_step()
        supervised_pair()
    aide_t, sup_t = [], []
    for rep in range(args.reps):
        # Alternate which side runs first so slow drifts in machine load cancel.
        if rep % 2:
            sup_t.append(_time(supervised_pair, device))
            aide_t.append(_time(aide_step, device))
        else:
            aide_t.append(_time(aide_step, device))
            sup_t.append(_time(supervised_pair, device))
    aide_wall, sup_wall = (statistics.median(t[0] for t in ts) for ts in (aide_t, sup_t))
    aide_cpu, sup_cpu = (statistics.median(t[1] for t in ts) for ts in (aide_t, sup_t))
    # One CPU thread: CPU time is the work done, immune to other load. On a GPU the host
    # mostly waits, so wall time after synchronisation is the measure.
    ratio = aide_cpu / sup_cpu if device.type == "cpu" else aide_wall / sup_wall
    print(f"config: overrides={args.overrides} device={device} batch={args.batch_size} size={args.size} base_width={args.base_width} threads={args.threads} "
          f"K={cfg.options_of('aide').num_augmentations} reps={args.reps} torch={torch.__version__} "
          f"pseudo_label_rows_per_pass={default_rows_per_pass(batch.image)}")
    print(f"aide_step_s wall median={aide_wall:.3f} all={[round(t[0], 3) for t in aide_t]}")
    print(f"two_supervised_steps_s wall median={sup_wall:.3f} all={[round(t[0], 3) for t in sup_t]}")
    print(f"aide_step_s cpu median={aide_cpu:.3f}; two_supervised_steps_s cpu median={sup_cpu:.3f}")
    print(f"wall_clock_ratio={aide_wall / sup_wall:.3f}")
    print(f"aide_step_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
