"""`aide-ray figures RUN`: every figure the run folder's files allow, an index, and notes on what was skipped."""

from __future__ import annotations

import numpy as np

from aide_ray.cli.main import main
from aide_ray.eval.figures_run import write_run_figures
from aide_ray.runs.folder import HISTORY_FILE, SAMPLES_FILE, SCORES_FILE


def test_run_figures_cli_writes_everything_and_index(tmp_path, capsys, epoch_metrics, train_scores,
                                                     correction_samples, assert_png):
    run = tmp_path / "run"
    run.mkdir()
    epoch_metrics().to_csv(run / HISTORY_FILE, index=False)
    train_scores().to_csv(run / SCORES_FILE, index=False)
    np.savez(run / SAMPLES_FILE, **correction_samples())
    assert main(["figures", str(run)]) == 0
    out = run / "figures"
    for name in ("training_curves.png", "dice_scatter.png", "corrections.png", "corrections/case0_a_3.png"):
        assert_png(out / name)
    index = (out / "index.md").read_text()
    assert "(training_curves.png)" in index and "(dice_scatter.png)" in index and "(corrections.png)" in index
    # three figures plus one panel per sample
    assert "6 figure(s) written" in capsys.readouterr().out


def test_run_figures_skips_missing_inputs(tmp_path, epoch_metrics):
    run = tmp_path / "run"
    run.mkdir()
    epoch_metrics().to_csv(run / HISTORY_FILE, index=False)
    res = write_run_figures(run, tmp_path / "figs")
    assert res.written == ["training_curves.png", "index.md"]
    assert len(res.skipped) == 2 and any(f"{SCORES_FILE} not found" in s for s in res.skipped)
    assert "## Skipped" in (tmp_path / "figs" / "index.md").read_text()
    assert main(["figures", str(tmp_path / "nope")]) == 2


def test_run_figures_notes_an_unusable_samples_file(tmp_path, correction_samples):
    run = tmp_path / "run"
    run.mkdir()
    samples = correction_samples()
    del samples["net2"]
    np.savez(run / SAMPLES_FILE, **samples)
    res = write_run_figures(run, max_samples=2)
    assert res.out_dir == run / "figures" and res.written == ["index.md"]
    assert any("lacks arrays ['net2']" in s for s in res.skipped)
