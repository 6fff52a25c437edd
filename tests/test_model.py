"""ResNet-18: size, shapes, that it learns, and the optimiser/scheduler the trainer builds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.config import ModelConfig, OptimConfig
from common.errors import UserError
from models import ResNet18, build_model, count_parameters
from training.components import build_optimizer
from training.schedule import build_scheduler

# One torch thread per test process: the suite runs two at once on two cores, and oneDNN's
# convolutions slow down several-fold when oversubscribed (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("norm", ["layer", "group", "batch"])
def test_parameter_count_is_the_cifar_resnet18(norm):
    assert count_parameters(ResNet18(norm)) == 11_173_962


def test_layer_norm_is_groupnorm_with_one_group_everywhere():
    model = ResNet18("layer")
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))]
    assert norms and all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1 for m in norms)
    # The projection shortcuts are normalised too (3 of them: layer2..layer4).
    assert sum(1 for m in model.modules() if isinstance(m, torch.nn.Sequential) and len(m) == 2
               and isinstance(m[1], torch.nn.GroupNorm)) == 3


def test_group_count_is_respected_and_validated():
    model = build_model(ModelConfig(norm="group", groups=8))
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    with pytest.raises(UserError, match="groups"):
        build_model(ModelConfig(norm="group", groups=7))
    with pytest.raises(UserError, match="unknown norm"):
        build_model(ModelConfig(norm="instance"))


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_output_shapes_and_feature_maps(norm):
    model = ResNet18(norm).eval()
    x = torch.randn(4, 3, 32, 32)
    feats = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o.shape))
    assert model(x).shape == (4, 10)
    assert feats == {"layer1": (4, 64, 32, 32), "layer2": (4, 128, 16, 16),
                     "layer3": (4, 256, 8, 8), "layer4": (4, 512, 4, 4)}
    # channels-last input gives the same answer
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-4)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = ResNet18("layer").to(memory_format=torch.channels_last)  # the CPU default format: faster here
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    x, y = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_overfits_256_images():
    """The whole model fits a small set: a wiring bug (a dead branch, a detached norm) stops it.

    Each class is a fixed random template plus noise of the same strength, so the images all
    differ and fitting them needs the whole network to learn. The wiring is the published one at a
    quarter of the width (`width=16`, 1/16 of the cost), channels-last; it reaches 98% in 70 steps
    of 32. test_a_few_steps_lower_the_loss trains the published width.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    templates = torch.randn(10, 3, 32, 32, generator=g)
    y = torch.arange(256) % 10
    x = templates[y] + torch.randn(256, 3, 32, 32, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)  # the CPU default format of training: faster here
    model = ResNet18("layer", width=16).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, OptimConfig(lr=0.03, weight_decay=0.0), torch.device("cpu"))
    acc, step = 0.0, 0
    for step in range(1, 101):
        idx = torch.randint(0, 256, (32,), generator=g)
        model.train()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean().item()
            if acc >= 0.95:
                break
    assert acc >= 0.95, f"train accuracy only {acc:.2f} after {step} steps"


def test_scheduler_drops_lr_after_patience_epochs_without_improvement():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig()  # factor 0.1, patience 2, threshold 1e-3 (relative)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    # improves, then three epochs that improve by less than the 0.1% threshold
    for loss in (2.0, 1.5, 1.4995, 1.4990, 1.4989, 1.0):
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:4] == [0.03] * 4  # epochs 3 and 4 are the two of patience
    assert lrs[4] == pytest.approx(0.003)  # third non-improving epoch → drop
    assert lrs[5] == pytest.approx(0.003)


def test_width_scales_every_stage_and_is_checked():
    """`--width N`: stages of N, 2N, 4N, 8N channels, the same layers; out-of-range widths and
    group counts that do not divide every stage are one clear error."""
    model = build_model(ModelConfig(width=8))
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels, model.linear.in_features] == [8, 16, 32, 64]
    assert count_parameters(model) == 176_402
    assert [n for n, _ in model.named_modules()] == [n for n, _ in build_model(ModelConfig()).named_modules()]
    with pytest.raises(UserError, match="--width must be between 1 and"):
        build_model(ModelConfig(width=0))
    with pytest.raises(UserError, match=r"--groups must divide every stage's channels \(8, 16, 32, 64"):
        build_model(ModelConfig(norm="group", width=8, groups=32))


def test_weight_std_convs_standardize_each_filter_and_keep_conv2d_keys():
    """`--weight-std`: every conv computes with its filters centred and at unit variance (so scaling
    a filter changes nothing), the parameter count is ResNet-18's, and the state dict is a plain
    model's, so checkpoints move between the two classes."""
    from models.resnet import WS_EPS, StdConv2d

    torch.manual_seed(0)
    model = build_model(ModelConfig(weight_std=True, width=8)).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, StdConv2d) for m in convs)
    assert count_parameters(build_model(ModelConfig(weight_std=True))) == 11_173_962
    conv, x = convs[1], torch.randn(2, convs[1].in_channels, 8, 8)
    w = conv.weight.detach()
    var = w.var(dim=(1, 2, 3), keepdim=True, correction=0)
    standard = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (var + WS_EPS).sqrt()
    expected = F.conv2d(x, standard, stride=conv.stride, padding=conv.padding)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.5)  # a per-filter scale and shift: standardized away
    torch.testing.assert_close(conv(x), expected, rtol=1e-3, atol=1e-3)
    plain = build_model(ModelConfig(width=8))
    plain.load_state_dict(model.state_dict())
    assert not any(isinstance(m, StdConv2d) for m in plain.modules())
