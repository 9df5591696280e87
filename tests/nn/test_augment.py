"""Augmented pseudo-labels: exact warps, inverse mapping, out-of-view masking, one batched forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aide_ray.nn.augment import (MIN_COVERAGE, Views, augmented_pseudo_label, random_views, warp_from_views,
                                 warp_to_views)
from aide_ray.nn.losses import sharpen


def _blob(h=32, w=32, cy=13.0, cx=18.0):
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((yy - cy) ** 2 / 40 + (xx - cx) ** 2 / 60))[None, None]


class PixelNet(nn.Module):
    """A per-pixel 'segmenter' (1x1 conv): its prediction commutes with any warp."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[-4.0]]], [[[4.0]]]]))
            self.conv.bias.copy_(torch.tensor([1.0, -1.0]))
        self.bn = nn.BatchNorm2d(2)  # to observe the mode the forward ran in
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training))
        return self.bn(self.conv(x))


def _seed_far_from_right_angles() -> int:
    """A generator seed whose first view (K = 1, theta = 180) is rotated 30-60 degrees off the axes."""
    for seed in range(100):
        angle = float(random_views(1, 1, 180.0, generator=torch.Generator().manual_seed(seed)).angles_deg[0])
        if 30 <= angle % 90 <= 60:
            return seed
    raise AssertionError("no suitable seed")


def test_flip_and_right_angle_rotation_are_exact():
    img = torch.rand(1, 1, 16, 16)
    flipped = warp_to_views(img, Views(torch.tensor([0.0]), torch.tensor([True])))
    assert torch.allclose(flipped[0, 0], img[0, 0].flip(-1), atol=1e-6)
    rot = warp_to_views(img, Views(torch.tensor([90.0]), torch.tensor([False])))
    assert torch.allclose(rot[0, 0], torch.rot90(img[0, 0], 1), atol=1e-5)


def test_rotation_is_rigid_on_non_square_images():
    h, w = 32, 64
    yy, xx = torch.meshgrid(torch.arange(h).float() + 0.5, torch.arange(w).float() + 0.5, indexing="ij")
    disc = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < 10**2).float()[None, None]
    view = warp_to_views(disc, Views(torch.tensor([37.0]), torch.tensor([False])))
    # A centred disc is rotation invariant; a non-rigid (normalised-coordinate) rotation would squash it.
    assert (view - disc).abs().mean() < 0.01


@pytest.mark.parametrize("angle, flip", [(25.0, False), (-50.0, True), (60.0, True)])
def test_inverse_warp_maps_back_within_tolerance(angle, flip):
    img = _blob(32, 48)
    views = Views(torch.tensor([angle]), torch.tensor([flip]))
    back, valid = warp_from_views(warp_to_views(img, views), views)
    inside = valid[0, 0] > 0.999
    assert inside.float().mean() > 0.5
    # Two bilinear resamplings of a smooth image: within a few hundredths.
    assert (back[0, 0] - img[0, 0])[inside].abs().max() < 0.03


def test_out_of_view_pixels_are_masked():
    h = w = 32
    views = Views(torch.tensor([45.0]), torch.tensor([False]))
    probs = torch.full((1, 2, h, w), 0.5)
    back, valid = warp_from_views(probs, views)
    assert valid.shape == (1, 1, h, w)
    # Corners of a square leave the view under a 45 degree rotation; the centre stays.
    for y, x in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        assert valid[0, 0, y, x] == 0 and back[0, :, y, x].abs().sum() == 0
    assert valid[0, 0, h // 2, w // 2] == pytest.approx(1.0)


def test_pseudo_label_equals_prediction_for_a_pixelwise_net():
    torch.manual_seed(0)
    net = PixelNet().eval()
    img = _blob(32, 32)
    pseudo = augmented_pseudo_label(net, img, k=4, theta_deg=60.0, temperature=1.0)
    with torch.no_grad():
        direct = net(img).softmax(1)
    assert pseudo.shape == (1, 2, 32, 32)
    assert torch.allclose(pseudo.sum(1), torch.ones(1, 32, 32), atol=1e-5)
    assert (pseudo - direct).abs().max() < 0.05


def test_uncovered_pixels_take_the_fallback():
    torch.manual_seed(0)
    net = PixelNet().eval()
    img = _blob(32, 32)
    fallback = torch.zeros(1, 2, 32, 32)
    fallback[:, 1] = 1.0  # distinctive: foreground everywhere
    # theta = 180 with K = 1: corners are uncovered unless the angle is near a multiple of 90.
    seed = _seed_far_from_right_angles()
    gen = torch.Generator().manual_seed(seed)
    views = random_views(1, 1, 180.0, generator=torch.Generator().manual_seed(seed))
    _, valid = warp_from_views(torch.ones(1, 1, 32, 32), views)
    uncovered = valid[0, 0] < MIN_COVERAGE
    assert uncovered.any()
    pseudo = augmented_pseudo_label(net, img, k=1, theta_deg=180.0, temperature=1.0, generator=gen,
                                    fallback_probs=fallback)
    assert torch.allclose(pseudo[0, 1][uncovered], torch.ones(int(uncovered.sum())))
    with torch.no_grad():
        direct = net(img).softmax(1)
    assert (pseudo - direct)[0, 1][~uncovered].abs().max() < 0.05


def test_without_fallback_uncovered_rows_get_an_extra_unaugmented_pass():
    net = PixelNet().eval()
    img = torch.cat([_blob(32, 32), _blob(32, 32, 20, 10)])
    pseudo = augmented_pseudo_label(net, img, k=1, theta_deg=180.0, temperature=1.0,
                                    generator=torch.Generator().manual_seed(_seed_far_from_right_angles()))
    assert net.calls == [(2, False), (2, False)]  # the views, then the rows with uncovered corners
    with torch.no_grad():
        direct = net(img).softmax(1)
    assert (pseudo - direct).abs().max() < 0.05


def test_k_views_go_through_one_forward_pass_in_eval_mode_and_mode_is_restored():
    net = PixelNet().train()
    img = _blob(32, 32).repeat(3, 1, 1, 1)
    augmented_pseudo_label(net, img, k=4, theta_deg=30.0, temperature=0.5, fallback_probs=torch.full((3, 2, 32, 32), .5))
    assert net.calls == [(12, False)]
    assert net.training


def test_split_passes_give_the_same_pseudo_label_in_eval_mode():
    net = PixelNet()
    img = _blob(32, 32).repeat(2, 1, 1, 1)
    one = augmented_pseudo_label(net, img, 4, 40.0, 0.5, generator=torch.Generator().manual_seed(1),
                                 fallback_probs=torch.full((2, 2, 32, 32), .5))
    net.calls.clear()
    split = augmented_pseudo_label(net, img, 4, 40.0, 0.5, generator=torch.Generator().manual_seed(1),
                                   fallback_probs=torch.full((2, 2, 32, 32), .5), rows_per_pass=2)
    assert net.calls == [(2, False)] * 4
    assert torch.allclose(one, split, atol=1e-6)


def test_train_mode_pseudo_label_runs_in_train_mode_in_one_pass():
    net = PixelNet().train()
    augmented_pseudo_label(net, _blob().repeat(2, 1, 1, 1), 2, 10.0, 0.5, eval_mode=False, rows_per_pass=2,
                           fallback_probs=torch.full((2, 2, 32, 32), .5))
    assert net.calls == [(4, True)]


def test_pseudo_label_is_sharpened_and_without_gradient():
    torch.manual_seed(0)
    net = PixelNet().eval()
    img = _blob(32, 32)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = augmented_pseudo_label(net, img, 2, 20.0, 1.0, generator=gen())
    sharp = augmented_pseudo_label(net, img, 2, 20.0, 0.5, generator=gen())
    assert torch.allclose(sharp, sharpen(plain, 0.5), atol=1e-5)
    assert not sharp.requires_grad


def test_random_views_ranges():
    v = random_views(5, 4, 60.0, generator=torch.Generator().manual_seed(0))
    assert len(v) == 20
    assert v.angles_deg.abs().max() <= 60.0
    with pytest.raises(ValueError, match="theta_deg must be in \\[0, 180\\], got 200"):
        random_views(1, 1, 200.0)
