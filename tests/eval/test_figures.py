"""Overlays and label-correction panels are drawn from small synthetic inputs as valid, non-empty PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from aide_ray.eval.figures import correction_grid, correction_panels, new_figure, overlay_figure, save_png


def test_overlay_figure(tmp_path, disk, assert_png):
    img = np.random.default_rng(0).normal(size=(40, 48))
    ref = disk(40, 48, 20, 24, 10)
    pred = disk(40, 48, 22, 0, 9)  # touches the image edge
    assert_png(overlay_figure(img, ref, pred, tmp_path / "o.png", "case 1"))
    assert_png(overlay_figure(img, np.zeros_like(ref), None, tmp_path / "empty.png"))
    with pytest.raises(ValueError, match=r"pred2d must have the image's shape \(40, 48\), got \(40, 40\)"):
        overlay_figure(img, ref, np.zeros((40, 40)), tmp_path / "bad.png")


def test_correction_panels_and_grid(tmp_path, correction_samples, assert_png):
    s = correction_samples()
    assert_png(correction_panels(s["image"][0], s["clean"][0], s["noisy"][0], s["net1"][0], s["net2"][0],
                                 tmp_path / "p.png", title="case0"))
    assert_png(correction_panels(s["image"][1], None, s["noisy"][1], s["net1"][1], s["net2"][1], tmp_path / "p2.png"))
    assert_png(correction_grid(s["image"], s["clean"], s["has_clean"], s["noisy"], s["net1"], s["net2"],
                               list(s["sample_id"]), tmp_path / "grid.png"))
    with pytest.raises(ValueError, match=r"image must be \(M, H, W\), got shape \(32, 32\)"):
        correction_panels(s["image"][0, 0], None, s["noisy"][0], s["net1"][0], s["net2"][0], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"correction arrays must all hold the same N >= 1 samples"):
        correction_grid(s["image"], s["clean"][:2], s["has_clean"], s["noisy"], s["net1"], s["net2"],
                        list(s["sample_id"]), tmp_path / "g.png")


def test_new_figure_and_save_png_write_a_png_atomically(tmp_path, assert_png):
    fig = new_figure(2.0, 2.0)
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    assert save_png(fig, tmp_path / "f.png") == tmp_path / "f.png"
    assert_png(tmp_path / "f.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]  # no temporary file left behind
