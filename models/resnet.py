"""ResNet-18 for 32×32 inputs (He et al. 2016, CIFAR variant), with the norm layer as a choice.

The CIFAR variant keeps a 3×3 stride-1 stem and no max-pool, so layer1 still works at 32×32;
stages 2-4 halve the resolution (32 → 16 → 8 → 4). With any of the three norms the model has
11,173,962 parameters: GroupNorm(1, C) ("layer"), GroupNorm(g, C) and BatchNorm2d all carry one
scale and one shift per channel.

"layer" norm here is GroupNorm with a single group: it normalises each sample over (C, H, W),
which is Layer Normalization for conv feature maps and, unlike nn.LayerNorm over (C, H, W),
keeps per-channel affine parameters and works at every resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ModelConfig

NormFactory = Callable[[int], nn.Module]
WS_EPS = 1e-6  # added to each filter's variance (timm's StdConv2d value)


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019; timm's `StdConv2d`): each output
    filter is centred and divided by its standard deviation at every forward, so the learned
    weight's per-filter mean and scale carry no meaning and the norm after it sees filters of one
    scale. No extra parameters, and the state-dict keys are Conv2d's, so a checkpoint loads into
    either class (the run's config.json says which one it trained with)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # Conv2d's own signature
        self.eps = WS_EPS  # an instance attribute: TorchScript reads those, not globals or class attributes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each filter is one "channel" of a batch of one: batch_norm's fused kernels standardize
        # it (timm's formulation; cheaper in the backward pass than var_mean and elementwise ops).
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return self._conv_forward(x, w, self.bias)


def norm_factory(norm: str, groups: int = 32) -> NormFactory:
    if norm == "layer":
        return lambda c: nn.GroupNorm(1, c)
    if norm == "group":
        return lambda c: nn.GroupNorm(groups, c)
    if norm == "batch":
        return nn.BatchNorm2d
    raise ValueError(f"unknown norm {norm!r}")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: NormFactory,
                 shortcut_norm: NormFactory | None = None, conv: type[nn.Conv2d] = nn.Conv2d):
        super().__init__()
        # `bn1`/`bn2` hold whichever norm was chosen (LayerNorm by default), not necessarily
        # BatchNorm: the names are kept so checkpoints stay loadable across versions.
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Projection shortcut (3 in ResNet-18): its norm is `shortcut_norm` (the main path's
            # by default; BatchNorm in the original assignment, see ModelConfig.shortcut_norm).
            self.shortcut = nn.Sequential(conv(in_planes, planes, 1, stride=stride, bias=False),
                                          (shortcut_norm or norm)(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, int, int, int], norm: NormFactory, num_classes: int = 10,
                 shortcut_norm: NormFactory | None = None, zero_init: bool = True, width: int = 64,
                 conv: type[nn.Conv2d] = nn.Conv2d):
        super().__init__()
        self.shortcut_norm = shortcut_norm
        self.conv = conv
        self.in_planes = width
        self.conv1 = conv(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm(width)
        self.layer1 = self._make_layer(width, num_blocks[0], 1, norm)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], 2, norm)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], 2, norm)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], 2, norm)
        self.linear = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if zero_init and isinstance(m, BasicBlock):
                # Each residual branch starts as zero, so the net starts as a shallow identity-like
                # chain (Goyal et al. 2017, timm's zero_init_last): with LayerNorm at the default lr
                # the first steps' loss falls instead of climbing (docs/BENCHMARKS.md, 'Moved from
                # code comments').
                nn.init.zeros_(m.bn2.weight)  # type: ignore[arg-type]  # every norm here has an affine weight

    def _make_layer(self, planes: int, blocks: int, stride: int, norm: NormFactory) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, norm, self.shortcut_norm, self.conv))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def ResNet18(norm: str = "layer", groups: int = 32, num_classes: int = 10, shortcut_norm: str = "same",
             zero_init: bool = True, width: int = 64, weight_std: bool = False) -> ResNet:
    """`width`: channels of the first stage (64 as published); the stages have 1, 2, 4, 8 × width.
    `weight_std`: every conv (stem, blocks, shortcuts) is a `StdConv2d`."""
    shortcut = None if shortcut_norm in ("same", norm) else norm_factory(shortcut_norm, groups)
    return ResNet((2, 2, 2, 2), norm_factory(norm, groups), num_classes, shortcut, zero_init, width,
                  StdConv2d if weight_std else nn.Conv2d)


def build_model(cfg: ModelConfig) -> ResNet:
    cfg.validate()
    return ResNet18(cfg.norm, cfg.groups, num_classes=cfg.num_classes, shortcut_norm=cfg.shortcut_norm,
                    zero_init=cfg.zero_init, width=cfg.width, weight_std=cfg.weight_std)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
