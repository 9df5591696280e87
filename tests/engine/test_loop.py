"""Shared step helpers and the in-memory reference loop, incl. a small end-to-end AIDE learning test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aide_ray.config import load_config
from aide_ray.engine.loop import apply_correction, iterate_batches, make_batch, train_in_memory
from aide_ray.engine.step import correction_candidates, ensemble_probs, make_optimizers, train_one_step
from aide_ray.methods.base import Batch
from aide_ray.methods.correction import dice_per_sample
from aide_ray.methods.supervised import Supervised

SIZE = 32


def _cfg(*overrides: str):
    return load_config(None, ["model.base_width=4", "batch_size=4", *overrides])


def _disc_data(n: int, rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of one bright ellipse each, and its exact mask."""
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        ry, rx = rng.uniform(0.12 * size, 0.25 * size, 2)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        images[i, 0] = masks[i] + rng.normal(0, 0.35, (size, size))
    return images, masks


def test_make_optimizers_follow_config():
    cfg = _cfg("optim.lr=0.005", "optim.weight_decay=0.01", "optim.step_epochs=3", "optim.gamma=0.1")
    nets = {"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}
    opts, scheds = make_optimizers(cfg, nets, ["a"])
    assert set(opts) == set(scheds) == {"a"}
    group = opts["a"].param_groups[0]
    assert isinstance(opts["a"], torch.optim.Adam)
    assert (group["lr"], group["weight_decay"], group["amsgrad"]) == (0.005, 0.01, True)
    for _ in range(3):
        opts["a"].step()  # no gradients: a no-op, keeps the documented step order
        scheds["a"].step()
    assert opts["a"].param_groups[0]["lr"] == pytest.approx(0.0005)
    with pytest.raises(KeyError, match="trained net 'c' is not among the nets"):
        make_optimizers(cfg, nets, ["c"])


class _Recorder(Supervised):
    def __init__(self, cfg):
        super().__init__(cfg, in_channels=1)
        self.after_calls = 0

    def after_optimizer_step(self, nets, epoch):
        self.after_calls += 1


def _batch(n=4, labels_slots=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, labels_slots, SIZE, SIZE, dtype=torch.int64)
    labels[:, :, 8:20, 10:24] = 1
    return Batch(torch.randn(n, 1, SIZE, SIZE, generator=g) + labels[:, :1].float(), labels,
                 torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.arange(n))


def test_train_one_step_updates_weights_and_calls_hook():
    cfg = _cfg("method=supervised")
    method = _Recorder(cfg)
    nets = method.build_nets()
    opts, _ = make_optimizers(cfg, nets, method.trained_nets)
    before = [p.detach().clone() for p in nets["net"].parameters()]
    nets["net"].eval()
    metrics = train_one_step(method, nets, opts, _batch(), epoch=0)
    assert nets["net"].training  # put back in train mode
    assert metrics["loss"] == pytest.approx(metrics["loss_net"]) and metrics["loss"] > 0
    assert method.after_calls == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["net"].parameters()))


def test_correction_candidates_per_slot():
    cfg = _cfg()
    from aide_ray.methods.aide import Aide

    method = Aide(cfg, in_channels=1)
    nets = method.build_nets()
    batch = _batch(3, labels_slots=2)
    batch.labels[:, 1] = 0
    cands = correction_candidates(method, nets, batch)
    assert len(cands) == 2
    for slot, (dice, pred) in enumerate(cands):
        assert dice.shape == (3,) and pred.shape == (3, SIZE, SIZE) and pred.dtype == np.uint8
        np.testing.assert_allclose(dice, dice_per_sample(pred, batch.labels[:, slot].numpy()))


def test_ensemble_probs_is_mean_softmax_in_eval_mode():
    torch.manual_seed(0)
    cfg = _cfg()
    nets = Supervised(cfg, 1).build_nets() | {"other": Supervised(cfg, 1).build_nets()["net"]}
    image = torch.randn(2, 1, SIZE, SIZE)
    for net in nets.values():
        net(image)  # move running statistics
        net.train()
    probs = ensemble_probs(nets, ["net", "other"], image)
    with torch.no_grad():
        expected = sum(n.eval()(image).softmax(1) for n in nets.values()) / 2
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(2, SIZE, SIZE))


def test_iterate_batches_drops_incomplete_last_chunk_unless_alone():
    order = np.arange(10)
    assert [len(b) for b in iterate_batches(order, 4)] == [4, 4]
    assert [len(b) for b in iterate_batches(order, 4, drop_last=False)] == [4, 4, 2]
    assert [len(b) for b in iterate_batches(np.arange(3), 4)] == [3]


def test_make_batch_flips_image_and_labels_together():
    images = np.arange(2 * 1 * 2 * 3, dtype=np.float32).reshape(2, 1, 2, 3)
    labels = (images[:, 0] % 2).astype(np.uint8)[:, None]
    b = make_batch(images, labels, np.ones(2, bool), np.zeros(2, bool), np.array([1, 0]),
                   flip=np.array([True, False]))
    assert torch.equal(b.image[0, 0], torch.from_numpy(images[1, 0, :, ::-1].copy()))
    assert torch.equal(b.labels[0, 0], torch.from_numpy(labels[1, 0, :, ::-1].astype(np.int64)))
    assert torch.equal(b.image[1], torch.from_numpy(images[0]))
    assert b.sample_index.tolist() == [1, 0]


def test_apply_correction_is_crossed_and_skips_empty_predictions():
    current = np.zeros((4, 2, 2, 2), np.uint8)
    pred0 = np.ones((4, 2, 2), np.uint8)
    pred0[1] = 0  # net1's prediction for sample 1 is empty
    pred1 = np.full((4, 2, 2), 1, np.uint8)
    cands = [(np.array([0.1, 0.0, 0.9, 0.8]), pred0), (np.array([0.9, 0.8, 0.2, 0.1]), pred1)]
    changed = apply_correction(current, cands, np.ones(4, bool), ratio=0.5)
    # net1 (slot 0) selects samples 0, 1 -> written to slot 1, except the empty prediction of sample 1.
    assert current[:, 1].reshape(4, -1).any(1).tolist() == [True, False, False, False]
    # net2 (slot 1) selects samples 2, 3 -> written to slot 0.
    assert current[:, 0].reshape(4, -1).any(1).tolist() == [False, False, True, True]
    assert changed == 3


def test_train_in_memory_records_history_and_respects_hq():
    rng = np.random.default_rng(0)
    images, masks = _disc_data(8, rng)
    labelled = np.ones(8, bool)
    labelled[-1] = False
    hq = np.zeros(8, bool)
    hq[0] = True
    cfg = _cfg("aide.warmup_epochs=1", "aide.update_every=2", "aide.update_ratio=1.0", "optim.lr=0.003")
    seen = []
    result = train_in_memory(cfg, images, masks, labelled, hq, val=(images[:2], masks[:2]), epochs=2,
                             callback=lambda e, rec: seen.append(e))
    assert seen == [0, 1] and len(result.history) == 2
    rec = result.history[0]
    for key in ["loss", "loss_net1", "loss_net2", "ramp", "selected_fraction", "train_dice_net1",
                "train_dice_net2", "val_dice", "labels_corrected", "seconds", "slices_per_s", "lr"]:
        assert key in rec, key
    assert result.labels.shape == (8, 2, SIZE, SIZE)
    # The HQ row and the unlabelled row keep their labels whatever the nets predict.
    assert (result.labels[0] == masks[0]).all()
    assert (result.labels[-1] == 0).all()
    assert 0 <= result.best_epoch < 2 and set(result.best_state) == {"net1", "net2"}


def test_train_in_memory_is_reproducible_with_a_seed():
    rng = np.random.default_rng(1)
    images, masks = _disc_data(8, rng)
    args = (_cfg("method=supervised"), images, masks, np.ones(8, bool), np.zeros(8, bool))
    a = train_in_memory(*args, epochs=2, seed=3)
    b = train_in_memory(*args, epochs=2, seed=3)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_train_in_memory_checks_inputs():
    images = np.zeros((2, 1, SIZE, SIZE), np.float32)
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 32, 32\)"):
        train_in_memory(_cfg(), images, masks[:1], np.ones(2, bool), np.zeros(2, bool), epochs=1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\).*got values in \[0, 3\]"):
        train_in_memory(_cfg(), images, masks + 3 * (np.arange(2)[:, None, None] == 1), np.ones(2, bool),
                        np.zeros(2, bool), epochs=1)
    with pytest.raises(ValueError, match="eval.best_metric is 'val_dice' but no validation data"):
        train_in_memory(_cfg("eval.best_metric=val_dice"), images, masks, np.ones(2, bool), np.zeros(2, bool),
                        epochs=1)
    with pytest.raises(ValueError, match="no row is labelled"):
        train_in_memory(_cfg("method=supervised"), images, masks, np.zeros(2, bool), np.zeros(2, bool), epochs=1)


@pytest.mark.slow
def test_aide_learns_past_its_noisy_labels():
    """Labels corrupted by PyMIC's JSRT noise model (dilation/erosion/edge distortion): AIDE's
    ensemble and its corrected labels end up closer to the clean masks than the labels it was given."""
    from aide_ray.data.noise import corrupt_mask

    rng = np.random.default_rng(0)
    images, clean = _disc_data(16, rng)
    noisy = np.stack([corrupt_mask(m, rng, scale=SIZE / 256) for m in clean])
    noisy_dice = float(dice_per_sample(noisy, clean).mean())
    assert 0.75 < noisy_dice < 0.9  # the corruption is substantial
    cfg = load_config(None, ["model.base_width=4", "batch_size=8", "optim.lr=0.003", "optim.step_epochs=1000",
                             "aide.warmup_epochs=0", "aide.update_every=10", "aide.ramp_epochs=10"])
    result = train_in_memory(cfg, images, noisy, np.ones(16, bool), np.zeros(16, bool), val=(images, clean),
                             epochs=40, seed=0)  # 80 steps
    assert result.history[-1]["val_dice"] > noisy_dice + 0.04
    label_dice = np.mean([dice_per_sample(result.labels[:, s], clean).mean() for s in range(2)])
    assert label_dice > noisy_dice + 0.02
