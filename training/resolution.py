"""Progressive resizing: early epochs train on downscaled images, later ones at full size.

A convolution's cost grows with the image's area, so an epoch on smaller images costs less (by
less than the area, as a step also has parts that do not shrink: `bench train --sides`). FFCV's ImageNet recipes train most epochs at a lower resolution and
ramp it up to the full one before the end (`get_resolution`: a linear ramp between two epochs,
rounded); this is the same rule for small images. The test set is always scored at full size:
the last epochs, at full size, adapt the model to it, and the LayerNorm main path's statistics
are per image, so they do not depend on the size trained at.

The resolution depends only on the epoch, so an exact resume needs no extra state. The downscale
runs on the training device after the loader (both data paths alike), with bilinear antialiased
interpolation: each output pixel averages the input pixels it covers, as PIL's resize does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.config import AugmentConfig

MULTIPLE = 4  # sides are rounded to a multiple of this (FFCV rounds to 32 for ImageNet's 160-192 pixels)


def resolution_at(augment: AugmentConfig, epoch: int, full: int) -> int:
    """The side to train epoch `epoch` (0-based) at, for images `full` pixels on a side.

    With `min_res` 0 (off) or at least `full`: `full`. Otherwise epochs 1…`res_ramp_start`
    (1-based, as the epoch lines count) train at `min_res`, epochs from `res_ramp_end` on at `full`,
    and those between at the linear interpolation, rounded to the nearest multiple of 4 (halves up).
    """
    if augment.min_res <= 0 or augment.min_res >= full:
        return full
    n = epoch + 1
    if n <= augment.res_ramp_start:
        return augment.min_res
    if n >= augment.res_ramp_end:
        return full
    frac = (n - augment.res_ramp_start) / (augment.res_ramp_end - augment.res_ramp_start)
    side = augment.min_res + frac * (full - augment.min_res)
    return min(full, max(augment.min_res, MULTIPLE * math.floor(side / MULTIPLE + 0.5)))


def downscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """`x` (N, C, H, W) resized to `side` × `side`, in its memory format; unchanged at its own size."""
    if x.shape[-2:] == (side, side):
        return x
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=fmt)


def describe(augment: AugmentConfig) -> str:
    """The schedule in words for the run's header ("" when off)."""
    if augment.min_res <= 0:
        return ""
    return (f"; progressive resizing: {augment.min_res} px a side up to epoch {augment.res_ramp_start}, "
            f"full size by epoch {augment.res_ramp_end}")
