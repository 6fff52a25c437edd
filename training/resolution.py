"""Progressive resizing: early epochs train on downscaled images, later ones at full size.

A convolution's cost grows with the image's area, so an epoch on smaller images costs less (by
less than the area, as a step also has parts that do not shrink: `bench train --sides`). FFCV's
ImageNet recipes train most epochs at a lower resolution and ramp it up to the full one before the
end (`get_resolution`: a linear ramp between two epochs, rounded); this is the same rule for small
images, with the two epochs given as fractions of the run so that `--epochs N` stretches it. The test set is always scored at full size:
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


def ramp_epochs(augment: AugmentConfig, epochs: int) -> tuple[int, int]:
    """The ramp's fractions as 1-based epochs of a run of `epochs`: (last at `min_res`, first at
    full size), each rounded to the nearest whole epoch (1/3 and 3/5 of 15 epochs: 5 and 9)."""
    return round(augment.res_ramp_start * epochs), round(augment.res_ramp_end * epochs)


def resolution_at(augment: AugmentConfig, epoch: int, full: int, epochs: int) -> int:
    """The side to train epoch `epoch` (0-based) of `epochs` at, for images `full` pixels on a side.

    With `min_res` 0 (off) or at least `full`: `full`. Otherwise epochs 1…start (1-based, as the
    epoch lines count; `ramp_epochs`) train at `min_res`, epochs from end on at `full`, and those
    between at the linear interpolation, rounded to the nearest multiple of 4 (halves up).
    """
    if augment.min_res <= 0 or augment.min_res >= full:
        return full
    start, end = ramp_epochs(augment, epochs)
    n = epoch + 1
    if n <= start:
        return augment.min_res
    if n >= end:
        return full
    side = augment.min_res + (n - start) / (end - start) * (full - augment.min_res)
    return min(full, max(augment.min_res, MULTIPLE * math.floor(side / MULTIPLE + 0.5)))


def downscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """`x` (N, C, H, W) resized to `side` × `side`, in its memory format; unchanged at its own size."""
    if x.shape[-2:] == (side, side):
        return x
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=fmt)


def describe(augment: AugmentConfig, epochs: int) -> str:
    """The schedule in words for the run's header ("" when off)."""
    if augment.min_res <= 0:
        return ""
    start, end = ramp_epochs(augment, epochs)
    return f"; progressive resizing: {augment.min_res} px a side up to epoch {start}, full size by epoch {end}"
