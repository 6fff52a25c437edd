"""Progressive resizing: the side each epoch trains at, the downscale itself, the sizes a real run
feeds its model, exact mid-epoch resume across a change of size, and refused settings."""

from __future__ import annotations

import pytest
import torch

from common.config import AugmentConfig, TrainConfig, apply_recipe
from common.errors import UserError
from common.rundir import RunDir
from common.upgrade import upgrade_config
from tests.test_train import metrics_without_timing, run_train, signal_after_steps, tiny_config
from training.resolution import downscale, resolution_at


def test_the_fast_recipe_trains_five_epochs_at_24_then_ramps_to_32_by_epoch_9():
    augment = apply_recipe(TrainConfig(), "fast").augment
    assert [resolution_at(augment, e, 32, 15) for e in range(15)] == [24] * 5 + [28, 28] + [32] * 8


def test_the_ramp_stretches_with_the_epochs_and_a_short_run_ends_at_full_size():
    augment = apply_recipe(TrainConfig(), "fast").augment
    assert [resolution_at(augment, e, 32, 5) for e in range(5)] == [24, 24, 32, 32, 32]
    assert resolution_at(augment, 0, 32, 1) == 32
    long = [resolution_at(augment, e, 32, 40) for e in range(40)]
    assert long[:13] == [24] * 13 and long[23:] == [32] * 17 and long == sorted(long)


def test_off_or_not_smaller_than_the_images_means_full_size():
    assert all(resolution_at(AugmentConfig(), e, 32, 20) == 32 for e in range(20))
    big = AugmentConfig(min_res=32, res_ramp_start=0.3, res_ramp_end=0.6)
    assert all(resolution_at(big, e, 32, 10) == 32 for e in range(10))
    assert resolution_at(big, 0, 64, 10) == 32  # larger images: the same rule, relative to their size


def test_the_ramp_rounds_to_multiples_of_four_and_never_leaves_the_bounds():
    augment = AugmentConfig(min_res=8, res_ramp_start=0.2, res_ramp_end=0.8)
    sides = [resolution_at(augment, e, 32, 10) for e in range(10)]
    assert sides == [8, 8, 12, 16, 20, 24, 28, 32, 32, 32]  # 8 + (n - 2) × 4 pixels on the ramp
    assert sides == sorted(sides) and all(s % 4 == 0 for s in sides)


def test_downscale_averages_the_pixels_it_covers_and_keeps_the_memory_format():
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2  # 0/1 checkerboard
    x = checker.float().expand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    small = downscale(x, 4)
    assert small.shape == (2, 3, 4, 4)
    # inside the border, each output pixel averages equal parts of 0 and 1 (no aliasing to 0 or 1)
    assert torch.allclose(small[..., 1:3, 1:3], torch.full((2, 3, 2, 2), 0.5), atol=1e-6)
    grey = downscale(torch.full((1, 3, 32, 32), 0.25), 24)
    assert grey.shape == (1, 3, 24, 24) and torch.allclose(grey, torch.full_like(grey, 0.25))
    assert small.is_contiguous(memory_format=torch.channels_last)
    plain = downscale(x.contiguous(), 4)
    assert plain.is_contiguous() and torch.equal(plain, small.contiguous())
    assert downscale(x, 8) is x


def test_a_run_trains_at_the_scheduled_sizes_and_resumes_across_a_change_of_size_bit_identically(
        prepared_dir, tmp_path, monkeypatch):
    """The uninterrupted run feeds its model 16 px, then the ramp's 24, then 32, and scores the test
    set at 32; stopped after step 1 of epoch 2 and resumed, it ends with the same metrics and
    weights, since the side depends on the epoch alone."""
    import models.resnet as resnet
    from training.epoch import Interrupted

    def config(run):
        cfg = tiny_config(prepared_dir, run, epochs=3, schedule="onecycle")
        cfg.augment.min_res, cfg.augment.res_ramp_start, cfg.augment.res_ramp_end = 16, 1 / 3, 1.0
        return cfg

    sizes: list[tuple[bool, int]] = []
    real_forward = resnet.ResNet.forward

    def recording_forward(self, x):
        sizes.append((self.training, x.shape[-1]))
        return real_forward(self, x)

    monkeypatch.setattr(resnet.ResNet, "forward", recording_forward)
    reference = run_train(config(tmp_path / "ref")).run
    monkeypatch.undo()
    assert [side for training, side in sizes if training] == [16, 16, 24, 24, 32, 32]  # 2 steps an epoch
    assert {side for training, side in sizes if not training} == {32}
    signal_after_steps(monkeypatch, 3)  # the first step of epoch 2
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step 1"):
        run_train(config(cut))
    monkeypatch.undo()
    run_train(config(cut), resume=cut)
    assert metrics_without_timing(RunDir(cut)) == metrics_without_timing(reference)
    a = torch.load(reference.checkpoint_path("last"), weights_only=True)["model"]
    b = torch.load(RunDir(cut).checkpoint_path("last"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fields, words", [
    ({"min_res": 4}, ["--min-res", "at least 8"]),
    ({"min_res": 24, "res_ramp_start": 0.5, "res_ramp_end": 0.5}, ["--res-ramp-start", "start < end"]),
    ({"min_res": 24, "res_ramp_start": -0.1, "res_ramp_end": 0.6}, ["--res-ramp-start"]),
    ({"min_res": 24, "res_ramp_start": 0.3, "res_ramp_end": 9}, ["fractions of the run's epochs"]),
])
def test_bad_settings_are_refused_in_one_sentence(fields, words):
    with pytest.raises(UserError) as err:
        AugmentConfig(**fields).validate()
    assert all(w in str(err.value) for w in words)


def test_a_first_resizing_run_recorded_in_epochs_reads_as_the_same_fractions():
    """The first runs with resizing (this session's timed one among them) stored the ramp in epochs."""
    old = {"train": {"augment": {"min_res": 24, "res_ramp_start": 5, "res_ramp_end": 9}, "optim": {"epochs": 15}}}
    cfg = TrainConfig.from_dict(upgrade_config(old)["train"])
    assert [resolution_at(cfg.augment, e, 32, 15) for e in range(15)] == [24] * 5 + [28, 28] + [32] * 8
    cfg.validate()
