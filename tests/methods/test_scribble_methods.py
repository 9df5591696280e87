"""The scribble methods of issue 15 that regularise pCE, on tiny tensors and tiny U-Nets.

pCE: cross-entropy over the annotated pixels of labelled rows only (a prediction changed
where the label is UNANNOTATED leaves it unchanged, and gets no gradient from it).
Regularisers: entropy, total variation, Mumford-Shah and gated CRF, their values on
piecewise-constant predictions and images, the gated CRF against a direct unfold, every
pixel reached. Every scribble method: registry, options from the config, one optimisation
step lowers its loss, two epochs on the local backend; AIDE and supervised run on
scribbles. USTM and DMPLS are in test_scribble_teachers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.config import load_config
from aide_ray.engine.local import train_local
from aide_ray.engine.step import make_optimizers, train_one_step
from aide_ray.exceptions import ConfigError
from aide_ray.label_values import UNANNOTATED
from aide_ray.methods.base import Batch
from aide_ray.methods.entmin import entropy_map
from aide_ray.methods.gated_crf import CrfKernel, GatedCrf, gated_crf_loss
from aide_ray.methods.mumford_shah import MumfordShah, mumford_shah_loss, region_centroids
from aide_ray.methods.pce import Pce, annotated_pixels, partial_cross_entropy
from aide_ray.methods.registry import METHOD_NAMES, method_class
from aide_ray.methods.scribble_entmin import ScribbleEntMin
from aide_ray.methods.tv import Tv, total_variation

SIZE = 16
SCRIBBLE_METHODS = ["pce", "scribble_entmin", "tv", "mumford_shah", "gated_crf", "ustm", "dmpls"]
REGULARISED = {"scribble_entmin": ScribbleEntMin, "tv": Tv, "mumford_shah": MumfordShah, "gated_crf": GatedCrf}


def _cfg(method: str, *overrides: str):
    return load_config(None, [f"method={method}", "model.base_width=4", "batch_size=4", *overrides])


def scribble_batch(labelled: list[bool] | None = None, seed: int = 0, size: int = SIZE) -> Batch:
    """A bright square on a dark background, with noise; its scribble: a foreground stroke inside
    the square, a background stroke along the border, UNANNOTATED elsewhere. Unlabelled rows hold zeros."""
    labelled = [True, True, True, False] if labelled is None else labelled
    n = len(labelled)
    g = torch.Generator().manual_seed(seed)
    square = torch.zeros(size, size, dtype=torch.int64)
    square[4:12, 5:11] = 1
    image = 2.0 * square.float() + 0.1 * torch.randn(n, 1, size, size, generator=g)
    scribble = torch.full((size, size), UNANNOTATED, dtype=torch.int64)
    scribble[6:10, 8] = 1
    scribble[1, 2:14] = 0
    labels = scribble.expand(n, 1, size, size).clone()
    rows = torch.tensor(labelled)
    labels[~rows] = 0
    return Batch(image, labels, rows, torch.zeros(n, dtype=torch.bool), torch.arange(n))


class ParamLogits(nn.Module):
    """A 'network' whose output is a parameter: per-pixel gradients are visible."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits


# --------------------------------------------------------------------------- registry and options

def test_registry_lists_the_scribble_methods():
    assert set(SCRIBBLE_METHODS) <= METHOD_NAMES
    for name in SCRIBBLE_METHODS:
        cls = method_class(name)
        assert cls.name == name and not cls.uses_unlabelled and cls.label_slots == 1


@pytest.mark.parametrize("method, overrides, expected", [
    ("scribble_entmin", ["scribble_entmin.weight=0.3", "scribble_entmin.ramp_epochs=0"],
     {"weight": 0.3, "ramp_epochs": 0}),
    ("tv", ["tv.weight=0.05"], {"weight": 0.05, "ramp_epochs": 20}),
    ("mumford_shah", ["mumford_shah.length_weight=0.5"], {"length_weight": 0.5, "weight": 0.1}),
    ("gated_crf", ["gated_crf.radius=3", "gated_crf.intensity_sigma=0.5", "gated_crf.spatial_weight=0"],
     {"radius": 3, "intensity_sigma": 0.5, "spatial_weight": 0.0, "bilateral_xy_sigma": 5.0}),
    ("ustm", ["ustm.mirror=false", "ustm.num_passes=2"], {"mirror": False, "num_passes": 2, "ema_decay": 0.99}),
    ("dmpls", ["dmpls.pseudo_weight=1.0", "dmpls.aux_dropout=0.2"],
     {"pseudo_weight": 1.0, "aux_dropout": 0.2, "ramp_epochs": 0}),
])
def test_config_overrides_reach_the_options(method, overrides, expected):
    options = _cfg(method, *overrides).options_of(method)
    assert {key: getattr(options, key) for key in expected} == expected
    assert method_class(method).from_config(_cfg(method, *overrides), 1).options == options


@pytest.mark.parametrize("override, message", [
    ("tv.weight=-1", r"tv.weight must be in \[0, inf\)"),
    ("mumford_shah.length_weight=-0.1", r"mumford_shah.length_weight must be in \[0, inf\)"),
    ("gated_crf.radius=0", r"gated_crf.radius must be in \[1, 16\]"),
    ("gated_crf.intensity_sigma=0", r"gated_crf.intensity_sigma must be in \(0, inf\)"),
    ("ustm.ema_decay=1", r"ustm.ema_decay must be in \[0, 1\)"),
    ("dmpls.aux_dropout=1", r"dmpls.aux_dropout must be in \[0, 1\)"),
    ("scribble_entmin.ramp_epochs=-1", r"scribble_entmin.ramp_epochs must be in \[0, inf\)"),
])
def test_bad_options_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# --------------------------------------------------------------------------- pCE

def test_pce_is_cross_entropy_over_the_annotated_pixels_of_labelled_rows():
    torch.manual_seed(0)
    batch = scribble_batch()
    logits = torch.randn(4, 2, SIZE, SIZE, requires_grad=True)
    target = batch.labels[:, 0]
    loss = partial_cross_entropy(logits, target, batch.labelled)
    annotated = annotated_pixels(target, batch.labelled)
    log_p = torch.log_softmax(logits, 1).gather(1, target.clamp_max(1).unsqueeze(1)).squeeze(1)
    assert loss.item() == pytest.approx(-(log_p[annotated]).mean().item(), rel=1e-6)
    assert annotated[3].sum() == 0 and annotated[0].sum() == 4 + 12
    loss.backward()
    assert logits.grad.abs().sum(1)[~annotated].max() == 0  # unannotated pixels and row 3: no gradient
    assert logits.grad.abs().sum(1)[annotated].min() > 0


def test_pce_unchanged_by_the_prediction_where_the_label_is_unannotated():
    torch.manual_seed(1)
    batch = scribble_batch()
    logits = torch.randn(4, 2, SIZE, SIZE)
    unannotated = ~annotated_pixels(batch.labels[:, 0], batch.labelled)
    changed = logits + 10.0 * torch.randn_like(logits) * unannotated.unsqueeze(1)
    method = Pce.from_config(_cfg("pce"), 1)
    before = method.train_step({"net": ParamLogits(logits)}, batch, epoch=0).loss
    after = method.train_step({"net": ParamLogits(changed)}, batch, epoch=0).loss
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_pce_on_a_full_mask_is_cross_entropy_and_without_annotations_a_differentiable_zero():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    full = torch.randint(0, 3, (2, 8, 8))
    assert partial_cross_entropy(logits, full).item() == pytest.approx(F.cross_entropy(logits, full).item(), rel=1e-6)
    none = partial_cross_entropy(logits, torch.full((2, 8, 8), UNANNOTATED))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None and logits.grad.abs().max() == 0


# --------------------------------------------------------------------------- regularisers

def test_each_regularised_loss_is_pce_plus_its_term_and_reaches_every_pixel():
    torch.manual_seed(3)
    batch = scribble_batch()
    logits = torch.randn(4, 2, SIZE, SIZE)
    probs = torch.softmax(logits, 1)
    terms = {"scribble_entmin": entropy_map(logits).mean(), "tv": total_variation(probs),
             "mumford_shah": mumford_shah_loss(probs, batch.image, 0.5),
             "gated_crf": gated_crf_loss(probs, batch.image, CrfKernel(radius=2))}
    pce = partial_cross_entropy(logits, batch.labels[:, 0], batch.labelled)
    for name, cls in REGULARISED.items():
        extra = ["mumford_shah.length_weight=0.5"] if name == "mumford_shah" else \
            ["gated_crf.radius=2"] if name == "gated_crf" else []
        method = cls.from_config(_cfg(name, f"{name}.weight=0.2", f"{name}.ramp_epochs=0", *extra), 1)
        net = ParamLogits(logits)
        out = method.train_step({"net": net}, batch, epoch=0)
        assert out.loss.item() == pytest.approx((pce + 0.2 * terms[name]).item(), rel=1e-5), name
        assert out.metrics["loss_pce"] == pytest.approx(pce.item(), rel=1e-6)
        out.loss.backward()
        # TV's gradient is a sum of signs, exactly 0 where they cancel: most pixels, not all.
        unannotated = ~annotated_pixels(batch.labels[:, 0], batch.labelled)
        assert (net.logits.grad.abs().sum(1)[unannotated] > 0).float().mean() > 0.75, name


def test_the_regularisation_weight_ramps():
    method = Tv.from_config(_cfg("tv", "tv.weight=0.2", "tv.ramp_epochs=10"), 1)
    assert method.regularisation_weight(0) == pytest.approx(0.2 * math.exp(-5))
    assert method.regularisation_weight(10) == pytest.approx(0.2)


def test_total_variation_is_zero_when_constant_and_the_boundary_length_when_one_hot():
    assert total_variation(torch.full((2, 3, 8, 8), 1 / 3)).item() == 0.0
    split = torch.zeros(1, 2, 8, 8)
    split[:, 0, :, :3] = 1.0
    split[:, 1, :, 3:] = 1.0
    # 8 rows cross the vertical boundary; both classes change there: 2 * 8 / (8 * 8).
    assert total_variation(split).item() == pytest.approx(2 * 8 / 64)
    noisy = torch.softmax(5.0 * torch.randn(1, 2, 8, 8), 1)
    assert total_variation(noisy) > total_variation(split)


def test_mumford_shah_has_no_data_term_when_the_regions_are_the_pieces_of_the_image():
    image = torch.zeros(1, 1, 8, 8)
    image[..., 2:6, 2:6] = 3.0
    inside = (image[:, 0] > 0).long()
    one_hot = F.one_hot(inside, 2).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(region_centroids(one_hot, image), torch.tensor([[[0.0, 3.0]]]))
    loss = mumford_shah_loss(one_hot, image, length_weight=1.0)
    assert loss.item() == pytest.approx(total_variation(one_hot).item(), abs=1e-5)  # boundary length only
    assert mumford_shah_loss(one_hot, image, length_weight=0.0).item() == pytest.approx(0.0, abs=1e-5)
    shifted = torch.roll(one_hot, shifts=2, dims=-1)  # same length, regions across the edges
    assert mumford_shah_loss(shifted, image, length_weight=0.0) > 0.5
    flat = torch.zeros(1, 2, 8, 8)
    flat[:, 0] = 1.0
    assert mumford_shah_loss(flat, torch.ones(1, 1, 8, 8), 1.0).item() == pytest.approx(0.0, abs=1e-6)


def _gated_crf_by_unfold(probs: Tensor, image: Tensor, kernel: CrfKernel) -> Tensor:
    """The energy summed directly over every (pixel, in-image neighbour) pair of an unfolded window."""
    b, c, h, w = probs.shape
    d = 2 * kernel.radius + 1
    unfold = lambda x: F.unfold(x, d, padding=kernel.radius).view(b, x.shape[1], d, d, h, w)  # noqa: E731
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    xy = torch.stack([ys, xs]).expand(b, 2, h, w)
    inside = unfold(torch.ones(b, 1, h, w))[:, 0]
    dxy = ((unfold(xy) - xy.view(b, 2, 1, 1, h, w)) ** 2).sum(1)
    dint = ((unfold(image) - image.view(b, -1, 1, 1, h, w)) ** 2).sum(1)
    k = kernel.bilateral_weight * torch.exp(-0.5 * dxy / kernel.bilateral_xy_sigma ** 2 -
                                            0.5 * dint / kernel.intensity_sigma ** 2) + \
        kernel.spatial_weight * torch.exp(-0.5 * dxy / kernel.spatial_xy_sigma ** 2)
    k = k * inside
    k[:, kernel.radius, kernel.radius] = 0.0
    agreement = (unfold(probs) * probs.view(b, c, 1, 1, h, w)).sum(1)
    return (k * (1.0 - agreement)).sum() / (b * h * w)


def test_gated_crf_matches_the_direct_energy_in_value_and_gradient():
    torch.manual_seed(4)
    kernel = CrfKernel(radius=2, intensity_sigma=0.7)
    image = torch.randn(2, 2, 6, 7)
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    ours = gated_crf_loss(torch.softmax(logits, 1), image, kernel)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    direct = _gated_crf_by_unfold(torch.softmax(logits, 1), image, kernel)
    (grad_direct,) = torch.autograd.grad(direct, logits)
    assert ours.item() == pytest.approx(direct.item(), rel=1e-5)
    torch.testing.assert_close(grad_ours, grad_direct, rtol=1e-4, atol=1e-6)


def test_gated_crf_is_zero_when_constant_and_prefers_boundaries_on_image_edges():
    kernel = CrfKernel(radius=3, intensity_sigma=0.5, spatial_weight=0.0)
    image = torch.zeros(1, 1, 12, 12)
    image[..., :, 6:] = 4.0
    constant = torch.zeros(1, 2, 12, 12)
    constant[:, 1] = 1.0
    assert gated_crf_loss(constant, image, kernel).item() == pytest.approx(0.0, abs=1e-6)
    on_edge = torch.cat([image < 2, image >= 2], dim=1).float()
    off_edge = torch.roll(on_edge, shifts=3, dims=-1)
    assert gated_crf_loss(on_edge, image, kernel) < 1e-3 < gated_crf_loss(off_edge, image, kernel)
    # A gate switches pixels off as sources and destinations: gating the right half leaves a constant left half.
    gate = torch.zeros(1, 12, 12)
    gate[..., :6] = 1
    assert gated_crf_loss(off_edge, image, kernel, gate=gate) > 0
    assert gated_crf_loss(on_edge, image, kernel, gate=gate).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- whole steps

@pytest.mark.parametrize("name", SCRIBBLE_METHODS)
def test_one_optimisation_step_lowers_the_loss(name):
    cfg = _cfg(name, "optim.lr=0.01", "gated_crf.radius=2", "ustm.num_passes=2",
               *[f"{m}.ramp_epochs=0" for m in REGULARISED])
    torch.manual_seed(0)
    method = method_class(name).from_config(cfg, 1)
    nets = method.build_nets()
    optimizers, _ = make_optimizers(cfg.optim, nets, method.trained_nets)
    batch = scribble_batch([True] * 4)
    losses = []
    for _ in range(2):
        torch.manual_seed(7)  # the same noise, transformations and mixtures in both evaluations
        losses.append(train_one_step(method, nets, optimizers, batch, epoch=5)["loss"])
    assert math.isfinite(losses[0]) and losses[1] < losses[0], losses


@pytest.mark.parametrize("name", ["supervised", "aide"])
def test_supervised_and_aide_train_on_scribbles(name):
    cfg = _cfg(name, "aide.num_augmentations=2", "aide.ramp_epochs=1")
    torch.manual_seed(0)
    method = method_class(name).from_config(cfg, 1)
    nets = method.build_nets()
    batch = scribble_batch([True] * 4)
    batch.labels = batch.labels.expand(-1, method.label_slots, -1, -1).clone()
    out = method.train_step(nets, batch, epoch=3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for net in method.trained_nets:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets[net].parameters()), net


@pytest.mark.parametrize("name", SCRIBBLE_METHODS)
def test_trains_end_to_end_on_the_local_backend(name, tiny_shards, tmp_path):
    # Full masks (a scribble that annotates every pixel): the engine, checkpoints and evaluation
    # with each method's nets; scribble shards are the data side's (docs/data.md).
    cfg = _cfg(name, "optim.lr=0.01", "epochs=2", f"data.shards={tiny_shards}", f"run.storage_path={tmp_path}",
               "run.name=run", "gated_crf.radius=2", "ustm.num_passes=2",
               *[f"{m}.ramp_epochs=0" for m in REGULARISED])
    history = train_local(cfg).history
    assert np.isfinite(history.select_dtypes("number").to_numpy(float)).all()
    assert history["val_dice"].between(0, 1).all()
