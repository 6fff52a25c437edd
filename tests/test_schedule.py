"""The one-cycle schedule's values at chosen steps, weight decay by parameter kind, and the guard
that stops a finite blow-up."""

from __future__ import annotations

import math

import pytest
import torch

from common.config import OptimConfig, TrainConfig, apply_recipe
from training.components import build_optimizer
from training.epoch import BlowUpGuard
from training.schedule import OneCycle, build_scheduler, per_step


def test_onecycle_climbs_to_the_peak_then_falls_to_zero_at_the_last_step():
    f = OneCycle(total=10, peak=2)
    assert [f(t) for t in range(11)] == pytest.approx([0.5, 1.0, 8 / 9, 7 / 9, 6 / 9, 5 / 9, 4 / 9, 3 / 9, 2 / 9,
                                                       1 / 9, 0.0])


def test_onecycle_lr_per_step_through_torchs_lambda_lr():
    model = torch.nn.Linear(2, 2)
    optim = OptimConfig(lr=0.4, schedule="onecycle", peak_at=0.25, epochs=2)
    opt = build_optimizer(model, optim, torch.device("cpu"))
    sched = build_scheduler(opt, optim, steps_per_epoch=4)  # 8 steps, peak after 2
    assert per_step(sched)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])  # the lr this step trains at
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.4, 0.4 * 6 / 7, 0.4 * 5 / 7, 0.4 * 4 / 7, 0.4 * 3 / 7, 0.4 * 2 / 7,
                                  0.4 * 1 / 7])
    assert opt.param_groups[0]["lr"] == 0.0


def test_onecycle_state_resumes_on_the_same_lr():
    model = torch.nn.Linear(2, 2)
    optim = OptimConfig(lr=0.1, schedule="onecycle", epochs=3)
    opt = build_optimizer(model, optim, torch.device("cpu"))
    sched = build_scheduler(opt, optim, steps_per_epoch=10)
    for _ in range(13):
        opt.step()
        sched.step()
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    opt2 = build_optimizer(model, optim, torch.device("cpu"))
    sched2 = build_scheduler(opt2, optim, steps_per_epoch=10)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_weight_decay_on_conv_and_linear_weights_only_without_decay_all():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(1, 4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    opt = build_optimizer(model, OptimConfig(weight_decay=5e-4, decay_all=False, nesterov=True),
                          torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert all(g["nesterov"] for g in opt.param_groups)
    everything = build_optimizer(model, OptimConfig(weight_decay=5e-4), torch.device("cpu"))
    assert len(everything.param_groups) == 1 and everything.param_groups[0]["weight_decay"] == 5e-4


def test_fast_recipe_trains_on_all_images_with_a_fixed_schedule():
    cfg = apply_recipe(TrainConfig(), "fast").validate()
    assert cfg.optim.schedule == "onecycle" and cfg.data.val == 0 and cfg.optim.nesterov
    assert cfg.model.norm == "layer" and cfg.recipe == "fast"
    assert not cfg.augment.cutout and cfg.augment.flip and cfg.augment.crop and not cfg.augment.rotate


def test_guard_fires_on_a_window_mean_above_three_ln_c_and_not_before_the_window():
    guard = BlowUpGuard(classes=10, window=5)
    limit = 3 * math.log(10)
    loss_sum = seen = 0.0
    fired = []
    for step in range(12):
        loss = 2.0 if step < 4 else 50.0  # learns, then blows up at step 4
        loss_sum, seen = loss_sum + loss * 8, seen + 8
        fired.append(guard.mean_above_limit(step, loss_sum, seen))
    assert fired[:5] == [None] * 5  # fewer than 5 steps of history
    assert all(v is None or v > limit for v in fired)
    assert fired[-1] == pytest.approx(50.0)


def test_guard_stays_quiet_on_a_normal_run_with_short_spikes():
    guard = BlowUpGuard(classes=10, window=5)
    loss_sum = seen = 0.0
    for step in range(40):
        loss = 12.0 if step % 10 == 3 else 2.2  # a one-step spike above the limit now and then
        loss_sum, seen = loss_sum + loss, seen + 1
        assert guard.mean_above_limit(step, loss_sum, seen) is None


def test_ema_warms_up_then_holds_its_decay_and_starts_from_the_first_weights():
    """The average's decay is min(decay, (1 + n) / (10 + n)) after n updates, so after N steps the
    first weights keep a vanishing share instead of decay^N (5% at 0.999 over 2,925 steps)."""
    from training.components import build_ema, ema_decay_at

    assert ema_decay_at(0.999, 0) == 0.1 and ema_decay_at(0.999, 1) == 2 / 11
    assert ema_decay_at(0.999, 10_000) == 0.999 and ema_decay_at(0.5, 20) == 0.5
    model = torch.nn.Linear(2, 1, bias=False)
    ema = build_ema(model, 0.9)
    assert ema is not None
    expected = None
    for step in range(40):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update_parameters(model)
        d = ema_decay_at(0.9, step)
        expected = float(step) if expected is None else d * expected + (1 - d) * float(step)
        assert torch.allclose(ema.module.weight, torch.full((1, 2), expected), rtol=1e-5), step
    assert int(ema.n_averaged) == 40
    # the first weights' share after 40 updates: the product of the later decays, against 0.9^39
    share = math.prod(ema_decay_at(0.9, n) for n in range(1, 40))
    assert share < 1e-3 < 0.9**39 / 10
