"""`aide-ray train --resume` (local backend): the run's own config, overrides on top, one-line errors."""

from __future__ import annotations

from aide_ray.cli.main import main
from aide_ray.runs.checkpoint import load_checkpoint
from aide_ray.runs.folder import checkpoint_dirs


def _train(*args):
    return main(["train", "--backend", "local", *args])


def test_resume_trains_on_with_the_runs_own_config(tiny_shards, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(f"data.shards={tiny_shards}", f"run.storage_path={tmp_path}", "run.name=r", "epochs=1",
                  "model.base_width=4", "batch_size=4", "aide.num_augmentations=2") == 0
    capsys.readouterr()

    # Without the original model.base_width=4 (the demo default is 8): the saved config is used.
    assert _train("--resume", str(run), "epochs=2") == 0
    assert "Resuming from" in capsys.readouterr().out
    resumed = load_checkpoint(checkpoint_dirs(run)[-1]).config
    assert (resumed.model.base_width, resumed.epochs, resumed.batch_size) == (4, 2, 4)
    assert resumed.data.shards == str(tiny_shards)

    settings = tmp_path / "more.yaml"
    settings.write_text("optim:\n  lr: 0.02\n")
    assert _train("--resume", str(run), "--config", str(settings), "epochs=3") == 0
    resumed = load_checkpoint(checkpoint_dirs(run)[-1]).config
    assert (resumed.optim.lr, resumed.epochs, resumed.model.base_width) == (0.02, 3, 4)
    capsys.readouterr()

    # What a checkpoint cannot take fails in one line, before any training.
    assert _train("--resume", str(run), "epochs=4", "model.base_width=8") == 2
    err = capsys.readouterr().err
    assert err == ("aide-ray train: error: --resume: model.base_width is 4 in the run's checkpoint, 8 now; "
                   "a checkpoint cannot change it\n")
    assert _train("--resume", str(run), "epochs=4", "method=supervised") == 2
    assert "--resume: method is 'aide' in the run's checkpoint, 'supervised' now" in capsys.readouterr().err
    # A new run into the folder would silently continue it on Ray: refused.
    assert _train(f"data.shards={tiny_shards}", f"run.storage_path={tmp_path}", "run.name=r", "epochs=1") == 2
    assert "run.name must name a new run folder, got 'r'" in capsys.readouterr().err


def test_resume_of_an_empty_folder_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _train("--resume", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert err == f"aide-ray train: error: --resume {tmp_path / 'empty'}: the folder holds no checkpoint to resume from\n"
