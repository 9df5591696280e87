"""Tests of aide_ray.distributed.tune.schedule: the grace-period rule, the scheduler, resources and concurrency."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from aide_ray.config import Config
from aide_ray.distributed.tune.schedule import (
    grace_period,
    make_scheduler,
    max_concurrent_trials,
    resources_per_trial,
)
from aide_ray.distributed.tune.space import default_space, parse_space
from aide_ray.methods.registry import method_class


def test_grace_period_covers_the_largest_warmup():
    cfg = Config()  # aide, warm-up 20
    assert grace_period(default_space(), cfg) == 31  # randint [5, 31]: largest warm-up 30
    assert grace_period(parse_space({"aide.warmup_epochs": {"choice": [3, 12, 7]}}, cfg), cfg) == 13
    assert grace_period(parse_space({"aide.warmup_epochs": {"grid": [0]}}, cfg), cfg) == 1
    # Warm-up not swept: the config's.
    assert grace_period(parse_space({"aide.temperature": {"uniform": [0.1, 1.0]}}, cfg), cfg) == 21
    # A method without label correction has no warm-up to wait for.
    supervised = cfg.replace(method="supervised")
    assert grace_period(default_space(), supervised) == 1
    # ... unless a method that corrects labels is among the swept ones.
    both = parse_space({"method": {"choice": ["supervised", "aide"]}}, supervised)
    assert grace_period(both, supervised) == 21


def test_grace_period_sets_every_swept_option_of_a_method_together():
    # The warm-up is swept to {0}: no trial has the base config's 20, whatever else is swept beside it.
    cfg = Config()
    space = parse_space({"aide.warmup_epochs": {"grid": [0]}, "aide.temperature": {"uniform": [0.1, 1.0]}}, cfg)
    assert grace_period(space, cfg) == 1
    # Only the swept method's own section counts: a sweep of cps options says nothing about aide's warm-up.
    space = parse_space({"method": {"choice": ["aide", "cps"]}, "cps.ramp_epochs": {"randint": [1, 50]}}, cfg)
    assert grace_period(space, cfg) == 21


def test_grace_period_asks_each_method(monkeypatch):
    # Any method may need a grace period; the rule is the method's grace_epochs, not AIDE's warm-up.
    coteaching = method_class("coteaching")
    monkeypatch.setattr(coteaching, "grace_epochs", classmethod(lambda cls, options: options.ramp_epochs))
    cfg = Config(method="coteaching")
    assert grace_period(parse_space({"coteaching.forget_rate": {"uniform": [0.1, 0.3]}}, cfg), cfg) == 10
    assert grace_period(parse_space({"coteaching.ramp_epochs": {"randint": [2, 8]}}, cfg), cfg) == 7
    space = parse_space({"method": {"grid": ["coteaching", "aide"]}, "coteaching.ramp_epochs": {"choice": [40, 3]}},
                        cfg)
    assert grace_period(space, cfg) == 40


def test_make_scheduler_asha_after_the_warmup_else_fifo():
    cfg = Config(epochs=40)
    asha, text = make_scheduler(default_space(), cfg, "val_dice")
    assert isinstance(asha, ASHAScheduler)
    assert (asha._time_attr, asha._max_t, asha._stop_last_trials) == ("training_iteration", 40, False)
    assert asha._brackets[0]._rungs[-1][0] == 31  # first milestone: grace period 31
    assert text == "ASHA on val_dice: grace period 31 epochs, max_t 40, reduction factor 4"
    fifo, text = make_scheduler(default_space(), cfg.replace(epochs=31), "train_dice")
    assert isinstance(fifo, FIFOScheduler) and not isinstance(fifo, ASHAScheduler)
    assert text.startswith("no early stopping: the grace period (31 epochs")


def test_max_concurrent_trials_from_cluster_resources():
    one = Config(workers=1)
    # 1 worker CPU + driver 0.1 + 1 CPU for Ray Data = 2.1 per trial.
    assert resources_per_trial(one) == {"CPU": pytest.approx(2.1)}
    assert max_concurrent_trials(one, {"CPU": 4.0}) == 1
    assert max_concurrent_trials(one, {"CPU": 4.2}) == 2
    assert max_concurrent_trials(Config(workers=2, cpus_per_worker=2.0), {"CPU": 32.0}) == 6
    assert max_concurrent_trials(one, {"CPU": 1.0}) == 1  # at least one
    assert max_concurrent_trials(one, {}) == 1
    gpu = Config(workers=2, use_gpu=True, cpus_per_worker=4.0)
    assert resources_per_trial(gpu)["GPU"] == 2.0
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 5.0}) == 2
    assert max_concurrent_trials(gpu, {"CPU": 64.0}) == 1
