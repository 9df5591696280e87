"""The Dice scatter and training curves are drawn from small synthetic run tables as valid PNGs."""

from __future__ import annotations

import pandas as pd
import pytest

from aide_ray.eval.figures_training import dice_scatter, training_curves


def test_dice_scatter(tmp_path, train_scores, assert_png):
    assert_png(dice_scatter(train_scores(), tmp_path / "scatter.png"))
    assert_png(dice_scatter(train_scores(epochs=20), tmp_path / "scatter_long.png", max_epochs=5))
    train_scores().to_csv(tmp_path / "train_scores.csv", index=False)
    assert_png(dice_scatter(tmp_path / "train_scores.csv", tmp_path / "scatter_csv.png"))
    no_clean = train_scores().assign(dice_label_vs_clean=float("nan"))
    with pytest.raises(ValueError, match="no row with both"):
        dice_scatter(no_clean, tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"missing \['slot'\]"):
        dice_scatter(train_scores().drop(columns="slot"), tmp_path / "none.png")


def test_training_curves(tmp_path, epoch_metrics, assert_png):
    assert_png(training_curves(epoch_metrics(), tmp_path / "curves.png"))
    epoch_metrics().to_csv(tmp_path / "metrics.csv", index=False)
    assert_png(training_curves(tmp_path / "metrics.csv", tmp_path / "curves2.png"))
    with pytest.raises(ValueError, match="no column to plot"):
        training_curves(pd.DataFrame({"epoch": [0, 1], "seconds": [1, 2]}), tmp_path / "c.png")
    with pytest.raises(ValueError, match="metrics must have an 'epoch' column"):
        training_curves(pd.DataFrame({"loss": [0.5]}), tmp_path / "c.png")
