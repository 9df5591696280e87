"""Every figure is drawn from small synthetic inputs as a valid, non-empty PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from aide_ray.cli.main import main
from aide_ray.eval.figures import (
    correction_grid,
    correction_panels,
    dice_scatter,
    overlay_figure,
    training_curves,
    write_run_figures,
)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0  # something was drawn


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _samples(n: int = 3, m: int = 2, size: int = 32):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, m, size, size)).astype(np.float32)
    clean = np.stack([_disk(size, size, 16, 16, 8 + i) for i in range(n)])
    noisy = np.stack([_disk(size, size, 12, 18, 10) for _ in range(n)])
    return {
        "image": image, "clean": clean, "has_clean": np.array([True, False, True][:n]), "noisy": noisy,
        "net1": clean.copy(), "net2": np.roll(clean, 2, axis=2),
        "sample_id": np.array([f"case{i}/a/3" for i in range(n)]),
    }


def _scores(epochs: int = 3, n: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for e in range(epochs):
        for i in range(n):
            q = rng.uniform(0.3, 1.0)
            for slot in (0, 1):
                rows.append({"epoch": e, "sample_index": i, "slot": slot,
                             "dice_pred_vs_label": min(1.0, q + rng.normal(0, 0.05)),
                             "dice_label_vs_clean": q if i < 8 else float("nan")})
    return pd.DataFrame(rows)


def _metrics(epochs: int = 4) -> pd.DataFrame:
    e = np.arange(epochs)
    return pd.DataFrame({"epoch": e, "loss": 1.0 / (e + 1), "loss_net1": 1.1 / (e + 1), "loss_net2": 0.9 / (e + 1),
                         "train_dice": 0.5 + 0.1 * e, "val_dice": [np.nan, 0.6, 0.65, 0.7][:epochs],
                         "corrected_net1": [0, 0, 3, 2][:epochs], "seconds": 2.0, "slices_per_s": 50.0 + e})


def test_overlay_figure(tmp_path):
    img = np.random.default_rng(0).normal(size=(40, 48))
    ref = _disk(40, 48, 20, 24, 10)
    pred = _disk(40, 48, 22, 0, 9)  # touches the image edge
    _assert_png(overlay_figure(img, ref, pred, tmp_path / "o.png", "case 1"))
    _assert_png(overlay_figure(img, np.zeros_like(ref), None, tmp_path / "empty.png"))
    with pytest.raises(ValueError, match=r"pred2d must have the image's shape \(40, 48\), got \(40, 40\)"):
        overlay_figure(img, ref, np.zeros((40, 40)), tmp_path / "bad.png")


def test_correction_panels_and_grid(tmp_path):
    s = _samples()
    _assert_png(correction_panels(s["image"][0], s["clean"][0], s["noisy"][0], s["net1"][0], s["net2"][0],
                                  tmp_path / "p.png", title="case0"))
    _assert_png(correction_panels(s["image"][1], None, s["noisy"][1], s["net1"][1], s["net2"][1], tmp_path / "p2.png"))
    _assert_png(correction_grid(s["image"], s["clean"], s["has_clean"], s["noisy"], s["net1"], s["net2"],
                                list(s["sample_id"]), tmp_path / "grid.png"))
    with pytest.raises(ValueError, match=r"image must be \(M, H, W\), got shape \(32, 32\)"):
        correction_panels(s["image"][0, 0], None, s["noisy"][0], s["net1"][0], s["net2"][0], tmp_path / "x.png")


def test_dice_scatter_and_curves(tmp_path):
    _assert_png(dice_scatter(_scores(), tmp_path / "scatter.png"))
    _assert_png(dice_scatter(_scores(epochs=20), tmp_path / "scatter_long.png", max_epochs=5))
    no_clean = _scores().assign(dice_label_vs_clean=float("nan"))
    with pytest.raises(ValueError, match="no row with both"):
        dice_scatter(no_clean, tmp_path / "none.png")
    _assert_png(training_curves(_metrics(), tmp_path / "curves.png"))
    _metrics().to_csv(tmp_path / "metrics.csv", index=False)
    _assert_png(training_curves(tmp_path / "metrics.csv", tmp_path / "curves2.png"))
    with pytest.raises(ValueError, match="no column to plot"):
        training_curves(pd.DataFrame({"epoch": [0, 1], "seconds": [1, 2]}), tmp_path / "c.png")


def test_run_figures_cli_writes_everything_and_index(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _metrics().to_csv(run / "metrics.csv", index=False)
    _scores().to_csv(run / "train_scores.csv", index=False)
    np.savez(run / "correction_samples.npz", **_samples())
    assert main(["figures", str(run)]) == 0
    out = run / "figures"
    for name in ("training_curves.png", "dice_scatter.png", "corrections.png", "corrections/case0_a_3.png"):
        _assert_png(out / name)
    index = (out / "index.md").read_text()
    assert "(training_curves.png)" in index and "(dice_scatter.png)" in index and "(corrections.png)" in index
    # three figures plus one panel per sample
    assert "6 figure(s) written" in capsys.readouterr().out


def test_run_figures_skips_missing_inputs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics().to_csv(run / "metrics.csv", index=False)
    res = write_run_figures(run, tmp_path / "figs")
    assert res.written == ["training_curves.png", "index.md"]
    assert len(res.skipped) == 2 and any("train_scores.csv not found" in s for s in res.skipped)
    assert "## Skipped" in (tmp_path / "figs" / "index.md").read_text()
    assert main(["figures", str(tmp_path / "nope")]) == 2
