"""Tests of aide_ray.runs.checkpoint: resuming picks the newest checkpoint that verifies, and says what it skipped;
``model.init_from`` loads a plain U-Net into nets with extra heads."""

from __future__ import annotations

import json

import pytest
import torch

from aide_ray.config import load_config
from aide_ray.exceptions import CheckpointError
from aide_ray.methods.registry import create_method
from aide_ray.runs.checkpoint import (choose_checkpoint, init_nets_from, newest_valid_checkpoint, save_checkpoint,
                                      seal_checkpoint)
from aide_ray.runs.folder import FILES_MANIFEST, METRICS_FILE, STATE_FILE


def _checkpoint(run, name, epoch):
    folder = run / name
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(b"state of epoch %d" % epoch * 100)
    (folder / METRICS_FILE).write_text(json.dumps({"epoch": epoch, "val_dice": 0.5}))
    seal_checkpoint(folder)
    return folder


def test_the_newest_checkpoint_that_verifies_is_chosen_and_newer_ones_are_named(tmp_path):
    run = tmp_path / "run"
    assert newest_valid_checkpoint(run).path is None and newest_valid_checkpoint(run).skipped == ()
    old = _checkpoint(run, "checkpoint_2026-01-01_10-00-00.000000", 0)
    good = _checkpoint(run, "checkpoint_2026-01-01_10-00-05.000000", 1)
    truncated = _checkpoint(run, "checkpoint_2026-01-01_10-00-09.000000", 2)
    unfinished = _checkpoint(run, "checkpoint_2026-01-01_10-00-12.000000", 3)
    state = truncated / STATE_FILE
    state.write_bytes(state.read_bytes()[:50])
    (unfinished / FILES_MANIFEST).unlink()

    choice = newest_valid_checkpoint(run)
    assert (choice.path, choice.epoch) == (good, 1)
    assert [folder for folder, _ in choice.skipped] == [unfinished, truncated]
    assert f"{FILES_MANIFEST} is missing" in choice.skipped[0][1]
    assert "has 50 bytes, 1600 were written: truncated or changed" in choice.skipped[1][1]

    # A changed byte of the same size is caught by the SHA-256.
    (good / METRICS_FILE).write_text((good / METRICS_FILE).read_text().replace("0.5", "0.7"))
    choice = choose_checkpoint([good, old])
    assert choice.path == old and "does not match the SHA-256" in choice.skipped[0][1]
    assert choose_checkpoint([truncated]).path is None


def _method(name, *extra):
    return create_method(load_config(None, [f"method={name}", "model.base_width=4", *extra]), 1)


def _saved(folder, name):
    method = _method(name)
    torch.manual_seed(1)
    nets = method.build_nets()
    save_checkpoint(folder, config=load_config(None, [f"method={name}", "model.base_width=4"]), in_channels=1, epoch=0,
                    nets=nets, eval_nets=method.eval_nets, optimizers={}, schedulers={}, label_store_snapshot=None,
                    dataset_info={})
    return folder, nets["net"].state_dict()


@pytest.mark.parametrize("target, prefix, heads", [("urpc", "", "decoder.aux_heads (6 tensors)"),
                                                   ("cct", "unet.", "aux_decoders (")])
def test_init_from_starts_urpc_and_cct_nets_from_a_plain_unet_and_names_the_heads_left(tmp_path, target, prefix,
                                                                                       heads):
    folder, plain = _saved(tmp_path / "sup", "supervised")
    torch.manual_seed(2)
    net = _method(target).build_nets()["net"]
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    (loaded,) = init_nets_from({"net": net}, {"net": folder})
    state = net.state_dict()
    for key, value in plain.items():
        torch.testing.assert_close(state[prefix + key], value)  # every tensor of the U-Net loaded
    extra = {k for k in state if k.removeprefix(prefix) not in plain}
    # Batch norm fills a missing num_batches_tracked itself (0) and does not report it.
    assert set(loaded.left_at_init) == {k for k in extra if not k.endswith("num_batches_tracked")} != set()
    for key in loaded.left_at_init:
        assert ".aux_heads." in key or key.startswith("aux_decoders.")
        torch.testing.assert_close(state[key], fresh[key])  # the heads keep their initialisation
    assert loaded.partial and loaded.ignored == ()
    assert loaded.describe().startswith(f"model.init_from: net 'net' loaded from {folder}; left at their "
                                         f"initialisation (not in the checkpoint): {heads}")


def test_init_from_drops_extra_heads_and_still_refuses_nets_that_do_not_fit(tmp_path):
    folder, urpc = _saved(tmp_path / "urpc", "urpc")
    net = _method("supervised").build_nets()["net"]
    (loaded,) = init_nets_from({"net": net}, {"net": folder})
    assert loaded.left_at_init == () and all("aux_heads" in k for k in loaded.ignored) and len(loaded.ignored) == 6
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, urpc[key])
    plain, _ = _saved(tmp_path / "sup", "supervised")
    (whole,) = init_nets_from({"net": _method("supervised").build_nets()["net"]}, {"net": plain})
    assert not whole.partial and whole.describe() == f"model.init_from: net 'net' loaded from {plain}"
    with pytest.raises(CheckpointError, match=r"do not fit this model .*: size mismatch for encoder"):
        init_nets_from({"net": _method("urpc", "model.base_width=8").build_nets()["net"]}, {"net": plain})

