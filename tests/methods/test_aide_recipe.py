"""AIDE's two-stage recipe and its guards against poisoned corrections, on tiny tensors and one tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aide_ray.config import load_config
from aide_ray.engine.local import train_local
from aide_ray.engine.scoring import candidate_labels
from aide_ray.methods.aide import Aide, flip_view
from aide_ray.methods.base import Batch, Phase
from aide_ray.methods.correction import CorrectionPlan


def _aide(*overrides: str) -> Aide:
    return Aide.from_config(load_config(None, ["model.base_width=4", *overrides]), 1)


def test_stages_phases_and_plans_count_from_the_aide_stage():
    aide = _aide("aide.supervised_epochs=3", "aide.lr_factor=0.1", "aide.warmup_epochs=1", "aide.update_every=2")
    assert [aide.phase(e) for e in (0, 2)] == [Phase(), Phase()]
    assert aide.phase(3) == aide.phase(9) == Phase(index=1, start_epoch=3, lr_factor=0.1)
    # No correction in the supervised stage; then every epoch of the 1-epoch warm-up, then every 2nd.
    assert [e for e in range(9) if aide.correction_plan(e) is not None] == [3, 4, 6, 8]
    assert Aide.grace_epochs(aide.options) == 3 + 1 + 1
    assert _aide().phase(5) == Phase()


def test_supervised_stage_trains_each_net_on_its_own_slot_without_pseudo_labels():
    aide = _aide("aide.supervised_epochs=2")
    calls = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            calls.append(x.shape[0])
            return self.conv(x)

    labels = torch.zeros(4, 2, 8, 8, dtype=torch.int64)
    labels[:, 0, 2:6, 2:6] = 1
    batch = Batch(torch.randn(4, 1, 8, 8), labels, torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool),
                  torch.arange(4))
    out = aide.train_step({"net1": Net(), "net2": Net()}, batch, epoch=1)
    assert calls == [4, 4]  # one training forward per net, no K-view passes
    assert set(out.metrics) == {"loss_net1", "loss_net2"}
    assert out.loss.item() == pytest.approx(out.metrics["loss_net1"] + out.metrics["loss_net2"], rel=1e-6)


def test_flip_view_is_its_own_inverse_and_twin_flips_give_each_net_its_own_view():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    fh, fv = torch.tensor([True, False]), torch.tensor([True, True])
    y = flip_view(x, fh, fv)
    assert torch.equal(y[0, 0], x[0, 0].flip(-1).flip(-2)) and torch.equal(y[1, 0], x[1, 0].flip(-2))
    assert torch.equal(flip_view(y, fh, fv), x)
    seen = []

    class Recorder(nn.Module):
        def forward(self, image):
            seen.append(image.clone())
            return torch.cat([image, -image], dim=1)

    aide = _aide("aide.twin_flips=true")
    torch.manual_seed(0)
    image = torch.randn(16, 1, 4, 4)
    back = aide._logits(Recorder(), image)
    assert not torch.equal(seen[0], image)  # the net saw flipped rows ...
    assert torch.equal(back[:, :1], image)  # ... and its logits come back in the batch's frame


def test_agreement_writes_only_where_both_nets_agree():
    preds = [np.array([[[1, 1, 0, 0]]], np.uint8), np.array([[[1, 0, 0, 1]]], np.uint8)]
    current = np.array([[[[0, 0, 1, 0]], [[0, 1, 1, 1]]]], np.uint8)  # (B=1, S=2, H=1, W=4)
    plan = CorrectionPlan(ratio=0.5, targets=(1, 0), where_agree=True)
    new = candidate_labels(preds, current, plan)
    # Agreement on pixels 0 and 2; elsewhere the target slot's current label stays.
    assert new[0].tolist() == [[[1, 1, 0, 1]]]  # net1's candidate goes into slot 1: current slot 1 = 0 1 1 1
    assert new[1].tolist() == [[[1, 0, 0, 0]]]  # net2's candidate goes into slot 0: current slot 0 = 0 0 1 0
    assert candidate_labels(preds, current, CorrectionPlan(0.5, (1, 0))) is preds


def test_cap_on_the_share_of_corrected_labels():
    plan = CorrectionPlan(ratio=0.25, targets=(1, 0), max_share=0.5)
    assert plan.count(20) == 5
    assert plan.count(20, already_corrected=7) == 3  # room for 10 - 7
    assert plan.count(20, already_corrected=12) == 0
    with pytest.raises(ValueError, match=r"max_share must be in \[0, 1\], got 1.5"):
        CorrectionPlan(0.25, (1, 0), max_share=1.5)


def test_two_stage_run_switches_optimisers_and_records_twin_agreement(tiny_shards, tmp_path):
    cfg = load_config(None, [f"data.shards={tiny_shards}", f"run.storage_path={tmp_path}", "run.name=two",
                             "model.base_width=4", "batch_size=4", "epochs=4", "optim.lr=0.01",
                             "aide.supervised_epochs=2", "aide.lr_factor=0.1", "aide.warmup_epochs=1",
                             "aide.update_every=5", "aide.update_ratio=0.5", "aide.num_augmentations=2",
                             "aide.twin_flips=true", "aide.correct_where_agree=true", "aide.max_corrected_share=0.5"])
    history = train_local(cfg).history
    assert history["phase"].tolist() == [0, 0, 1, 1]
    assert history["lr"].tolist() == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert history["label_update"].tolist() == [False, False, True, False]
    assert (history["relabelled_net1"] + history["relabelled_net2"]).iloc[:2].sum() == 0
    assert history["twin_dice"].between(0, 1).all()


def test_ablation_switches():
    assert all(_aide("aide.correct_labels=false").correction_plan(e) is None for e in range(5))
    twins = _aide("aide.identical_twins=true").build_nets()
    for a, b in zip(twins["net1"].state_dict().values(), twins["net2"].state_dict().values()):
        assert torch.equal(a, b)
    distinct = _aide().build_nets()
    assert not all(torch.equal(a, b) for a, b in zip(distinct["net1"].parameters(), distinct["net2"].parameters()))


def test_self_selection_ranks_a_nets_rows_by_its_own_loss():
    from aide_ray.methods.aide import aide_losses

    labels = torch.zeros(4, 2, 4, 4, dtype=torch.int64)
    labels[:, :, :2] = 1
    good = torch.stack([1 - labels[:, 0].float(), labels[:, 0].float()], 1) * 8  # fits every row
    bad = good.clone()
    bad[:2] = -bad[:2]  # rows 0, 1 fit badly
    logits = {"net1": good, "net2": bad}
    labelled = torch.ones(4, dtype=torch.bool)
    _, crossed = aide_losses(logits, labels, labelled, None, ramp=0.0, consistency_weight=0.0,
                             small_loss_fraction=0.5)
    _, own = aide_losses(logits, labels, labelled, None, ramp=0.0, consistency_weight=0.0,
                         small_loss_fraction=0.5, crossed=False)
    assert crossed["net1"].tolist() == [False, False, True, True]  # net2's small-loss rows
    assert own["net2"].tolist() == [False, False, True, True] and own["net1"].tolist() == [True, True, False, False]


def test_the_step_treats_the_twins_alike_swapping_nets_and_slots_swaps_their_losses():
    # A loss gap between net1 and net2 in a run must come from their weights, not from their names: the same
    # two nets, named the other way round with their label slots swapped, get each other's losses.
    # Pointwise nets see the same pixels under any flip, so the random views and twin flips do not matter.
    aide = _aide("aide.twin_flips=true", "aide.num_augmentations=2", "aide.rotation_degrees=0",
                 "aide.consistency_weight=1", "aide.ramp_epochs=2", "aide.small_loss_fraction=0.5")
    torch.manual_seed(0)
    a, b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)
    image = torch.randn(6, 1, 8, 8)
    labels = (torch.rand(6, 2, 8, 8) < torch.tensor([0.3, 0.6]).view(1, 2, 1, 1)).long()  # slots differ
    labelled, hq, index = torch.tensor([True] * 5 + [False]), torch.zeros(6, dtype=torch.bool), torch.arange(6)
    out = aide.train_step({"net1": a, "net2": b}, Batch(image, labels, labelled, hq, index), epoch=1)
    swapped = aide.train_step({"net1": b, "net2": a}, Batch(image, labels.flip(1), labelled, hq, index), epoch=1)
    assert out.metrics["ramp"] == 0.25  # the consistency term is on, the unlabelled row uses it alone
    assert swapped.metrics["loss_net1"] == pytest.approx(out.metrics["loss_net2"], rel=1e-5)
    assert swapped.metrics["loss_net2"] == pytest.approx(out.metrics["loss_net1"], rel=1e-5)
    assert abs(out.metrics["loss_net1"] - out.metrics["loss_net2"]) > 1e-3  # the nets differ, so the test can fail
