"""Test-time augmentation (TTA): the extra views of each test image a model scores, and how their
logits combine into one prediction.

- `shift` 0, flip TTA: the image and its mirror, logits averaged (one extra forward).
- `shift` s > 0: also the image translated by s pixels up-left and down-right (reflect padding,
  as the training crop pads), each with its mirror; the four shifted views together weigh as much
  as the two unshifted ones (five extra forwards). This is airbench's level-2 TTA
  (KellerJordan/airbench, `infer_mirror_translate`); the views are ones training showed the model
  (flips, and crops of the padded image), so they stay in its input distribution.

Logits, not softmax probabilities, are averaged, as airbench and cifar10-fast do. The caller's
plain-pass logits are reused, so the plain accuracy and the saved predictions stay the plain
pass's; `precision` wraps only the extra forwards (training passes its autocast: five extra passes
in fp32 would cost a CPU run more than its epoch budget holds, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.config import MAX_TTA_SHIFT

if TYPE_CHECKING:
    import torch
    from torch import nn


def tta_name(shift: int) -> str:
    """How logs, summaries and figures name the TTA a run scored: 'flip TTA' or 'flip + 1-px shift TTA'."""
    return "flip TTA" if shift == 0 else f"flip + {shift}-px shift TTA"


def extra_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """The views besides `x` (N, C, H, W) itself: its mirror, then (shift > 0) up-left, its mirror,
    down-right, its mirror."""
    import torch.nn.functional as F

    views = [x.flip(3)]
    if shift > 0:
        h, w = x.shape[2], x.shape[3]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        for crop in (padded[:, :, :h, :w], padded[:, :, 2 * shift:, 2 * shift:]):
            views += [crop, crop.flip(3)]
    return views


def tta_logits(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, shift: int = 0,
               precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Combined float32 logits (N, classes) for the batch `x`, whose plain logits are `logits`.

    `prepare` readies each view for the model (training: device and memory format); call under
    no_grad. Flip only: (plain + mirror) / 2. With shifts: half that, plus half the mean of the
    four shifted views."""
    if not 0 <= shift <= MAX_TTA_SHIFT:
        raise ValueError(f"TTA shift must be between 0 and {MAX_TTA_SHIFT}, got {shift}")
    with precision():
        outs = [model(prepare(v)).float() for v in extra_views(x, shift)]
    unshifted = (logits.float() + outs[0]) / 2
    if shift == 0:
        return unshifted
    import torch

    return unshifted / 2 + torch.stack(outs[1:]).mean(0) / 2
