"""FLOPs and speed of one training step: our U-Net, ours with the light decoder, and PyMIC 0.6.2's UNet2D.

Issue 16 part 5 compares our engine with the peer toolkit's loop (PyMIC 0.6.2) in
the setting of "On real data" (noisy Shenzhen, 128 px, base width 16, batch 8, 2
threads, no augmentation). PyMIC's U-Net has our widths but a lighter decoder,
so slices/s alone compares unequal work. This script puts the three networks on
one footing: the same fixed batch (``--batch-size`` x 1 x ``--size`` x ``--size``,
random image, a disc as the label), the same bare training step (forward,
cross-entropy, backward, Adam at lr 1e-3 and weight decay 1e-5, PyMIC's JSRT
settings) and the same ``--threads``:

- ``ours``: :class:`aide_ray.nn.unet.UNet2D`, the reference AIDE decoder (a 3x3
  conv after each bilinear x2 upsampling);
- ``ours_light``: the same with ``light_decoder=True`` (``model.light_decoder``: a
  1x1 conv before each upsampling, as PyMIC's ``UpBlock``);
- ``pymic``: ``pymic.net.net2d.unet2d.UNet2D`` with feature_chns = base width x
  (1, 2, 4, 8, 16), 2 classes, ``up_mode=2`` (bilinear), and the dropout of PyMIC's
  noisy-label JSRT example (``seg_noisy_label/JSRT/config/unet_ce.cfg``: [0, 0, 0.3,
  0.4, 0.5]; ``--pymic-dropout 0`` turns it off). It runs as PyMIC's code does
  (NCHW activations, LeakyReLU, convs with biases).

FLOPs are counted once per net by ``torch.utils.flop_counter.FlopCounterMode``
over forward, loss and backward: convolutions and matrix products only (2 per
multiply-add; batch norm, activations, interpolation and the Adam update are not
counted). Speed: after ``--warmup`` untimed steps of each, ``--reps`` rounds in
which each net takes one timed step, the order rotating from round to round so
that drifts in machine load affect all three alike; the median wall time per
step gives slices/s. ``gflop_per_s`` (GFLOP per step x steps per s) is the rate
at which a net does its arithmetic: ``per_flop_speed_ratio`` is ours over
PyMIC's (> 1: ours is faster per FLOP); ``light_vs_pymic_speed_ratio`` compares
slices/s outright at (nearly) equal FLOPs.

PyMIC is imported only from an installed ``pymic`` package (``pip install
pymic==0.6.2 --no-deps``; it is not a dependency of aide_ray); without it the
PyMIC net and the ratios are skipped. Run from the repository root; the setting of
issue 16 is the default::

    python benchmarks/unet_flops.py

The last lines are ``NAME=VALUE``: ``flops_gflop_<net>``, ``slices_per_s_<net>``,
``gflop_per_s_<net>`` for net in ours, ours_light, pymic, then ``light_flops_ratio``
(ours_light's FLOPs per step over ours), ``pymic_flops_ratio``
(PyMIC's FLOPs per step over ours), ``per_flop_speed_ratio`` and
``light_vs_pymic_speed_ratio``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from importlib import metadata
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from aide_ray.nn.unet import UNet2D

PYMIC_VERSION = "0.6.2"
PYMIC_JSRT_DROPOUT = [0.0, 0.0, 0.3, 0.4, 0.5]  # seg_noisy_label/JSRT/config/unet_ce.cfg of PyMIC_examples
INSTALL_HINT = f"pip install pymic=={PYMIC_VERSION} --no-deps"


def _batch(batch_size: int, size: int) -> tuple[Tensor, Tensor]:
    """A fixed batch: (B, 1, S, S) noise plus a disc, and the disc as the (B, S, S) label."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).long()
    image = torch.randn(batch_size, 1, size, size, generator=generator) + disc.float()
    return image, disc.expand(batch_size, size, size).clone()


def _pymic_unet(widths: list[int], dropout: list[float]) -> nn.Module | None:
    """PyMIC's UNet2D, or None (with a one-line message) when pymic is not installed."""
    try:
        from pymic.net.net2d.unet2d import UNet2D as PymicUNet2D
    except ImportError as e:
        print(f"PyMIC not installed ({e}): skipping its U-Net; install it without dependencies: {INSTALL_HINT}")
        return None
    version = metadata.version("pymic")
    if version != PYMIC_VERSION:
        print(f"warning: pymic {version} installed; the comparison is with {PYMIC_VERSION} ({INSTALL_HINT})")
    params = {"in_chns": 1, "class_num": 2, "feature_chns": list(widths), "dropout": list(dropout),
              "up_mode": 2, "multiscale_pred": False}
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints every parameter
        return PymicUNet2D(params)


def _step_fn(net: nn.Module, image: Tensor, label: Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(image), label).backward()
        opt.step()

    return step


def _step_flops(net: nn.Module, image: Tensor, label: Tensor) -> int:
    """Convolution and matmul FLOPs of forward, loss and backward (the Adam update has none)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(image), label).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image height = width (multiple of 16)")
    parser.add_argument("--base-width", type=int, default=16, help="widths: base x (1, 2, 4, 8, 16), all three nets")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each net")
    parser.add_argument("--reps", type=int, default=15, help="timed rounds (one step of each net per round)")
    parser.add_argument("--pymic-dropout", choices=("jsrt", "0"), default="jsrt",
                        help=f"PyMIC's dropout per level: jsrt = {PYMIC_JSRT_DROPOUT} (its JSRT example), 0 = none")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    image, label = _batch(args.batch_size, args.size)
    widths = [args.base_width * m for m in (1, 2, 4, 8, 16)]
    dropout = PYMIC_JSRT_DROPOUT if args.pymic_dropout == "jsrt" else [0.0] * 5
    nets: dict[str, nn.Module] = {}
    for name, light in (("ours", False), ("ours_light", True)):
        torch.manual_seed(0)
        nets[name] = UNet2D(1, 2, args.base_width, light_decoder=light)
    torch.manual_seed(0)
    pymic = _pymic_unet(widths, dropout)
    if pymic is not None:
        nets["pymic"] = pymic
    for net in nets.values():
        net.train()

    gflop = {name: _step_flops(net, image, label) / 1e9 for name, net in nets.items()}
    steps = {name: _step_fn(net, image, label) for name, net in nets.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in nets}
    names = list(nets)
    load_before = os.getloadavg()[0]
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]

    pymic_version = metadata.version("pymic") if "pymic" in nets else "absent"
    print(f"config: batch={args.batch_size} size={args.size} widths={widths} threads={args.threads} "
          f"warmup={args.warmup} reps={args.reps} torch={torch.__version__} pymic={pymic_version} "
          f"pymic_dropout={dropout if 'pymic' in nets else '-'} load={load_before:.1f}->{load_after:.1f}")
    for name in names:
        print(f"{name}_step_s median={statistics.median(times[name]):.4f} all={[round(t, 4) for t in times[name]]}")
    out: dict[str, float] = {}
    for name in names:
        slices_per_s = args.batch_size / statistics.median(times[name])
        out[f"flops_gflop_{name}"] = gflop[name]
        out[f"slices_per_s_{name}"] = slices_per_s
        out[f"gflop_per_s_{name}"] = gflop[name] * slices_per_s / args.batch_size
    out["light_flops_ratio"] = gflop["ours_light"] / gflop["ours"]
    if "pymic" in nets:
        out["pymic_flops_ratio"] = gflop["pymic"] / gflop["ours"]
        out["per_flop_speed_ratio"] = out["gflop_per_s_ours"] / out["gflop_per_s_pymic"]
        out["light_vs_pymic_speed_ratio"] = out["slices_per_s_ours_light"] / out["slices_per_s_pymic"]
    for key, value in out.items():
        print(f"{key}={value:.4g}")
    return out


if __name__ == "__main__":
    main()
