"""The numba kernel's augmentation (pipeline/kernels.py) as batched torch ops, on any device.

Why a second implementation: the torch data path (pipeline/torch_loader.py) must run where FFCV
and numba's FFCV glue cannot be installed, and on CUDA it augments batches where the images already
live, with no host work per batch. It reproduces `kernels.augment_batch` image for image:

- every random choice comes from the same counter-based hash of (seed, epoch, dataset index)
  (`splitmix64` → `image_key` → `uniform` → `draw_params`), computed with int64 tensor ops:
  torch's int64 add and multiply wrap modulo 2**64 as numba's uint64 do, and the hash's unsigned
  right shifts are arithmetic shifts with the sign-extended top bits masked off (bit-exact: the
  tests compare every drawn parameter, angles included);
- pad + crop is one integer gather into the cropped window (`fill` or reflect-101 outside the
  source); without rotation the flip and cutout join that gather, so the batch is one lookup;
- flip + rotation about the centre is one grid_sample (bilinear) per batch over the
  window, with the kernel's border semantics (see `_rotate`); cutout paints `fill`;
  normalisation is `v * scale + shift` with the kernel's float32 constants.

Agreement with the kernel (tests/test_torch_loader.py holds it): float32 output within
`KERNEL_ATOL` (normalised units); uint8 output identical but for rare values (at most 0.05%) that
differ by 1 (v + 0.5 within float rounding of an integer). Measured differences: docs/BENCHMARKS.md,
'torch data path'. Bilinear interpolation is continuous, so a tap coordinate that floors the other
way changes a value by float rounding only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

H = W = 32
_M64 = (1 << 64) - 1
# How far float32 output may differ from kernels.augment_batch's, in normalised units: rotation's
# bilinear taps round differently here (see _rotate); everything else is exact.
KERNEL_ATOL = 1e-4


def _signed(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GOLDEN_S, _M1_S, _M2_S = _signed(_GOLDEN), _signed(_M1), _signed(_M2)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53, as the kernel


def splitmix64_int(x: int) -> int:
    """splitmix64 on a Python int (for the per-batch seed/epoch part of the key)."""
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _M1) & _M64
    z = ((z ^ (z >> 27)) * _M2) & _M64
    return z ^ (z >> 31)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns: arithmetic shift, sign copies masked off."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 over int64 tensors holding uint64 bit patterns (wrap-around add/multiply)."""
    z = x + _GOLDEN_S
    z = (z ^ _srl(z, 30)) * _M1_S
    z = (z ^ _srl(z, 27)) * _M2_S
    return z ^ _srl(z, 31)


def epoch_key(seed: int, epoch: int) -> int:
    """The (seed, epoch) part of kernels.image_key, as an int64 bit pattern."""
    return _signed(splitmix64_int(splitmix64_int(seed & _M64) ^ (epoch & _M64)))


def image_key(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """kernels.image_key for a tensor of dataset indices (int64)."""
    return splitmix64(index.to(torch.int64) ^ epoch_key(seed, epoch))


def uniform(key: torch.Tensor, k: int) -> torch.Tensor:
    """kernels.uniform: the k-th draw in [0, 1), float64 (53 random bits: exact in float64)."""
    return _srl(splitmix64(key + k), 11).to(torch.float64) * _TO_UNIT


@dataclass(frozen=True)
class AugmentSpec:
    """What one call augments with: the kernel's parameter vector in named form, plus the
    normalisation. `normalize=False` gives the kernel's uint8 output (round half up)."""

    pad: int = 0
    flip_p: float = 0.0
    max_angle: float = 0.0
    cutout_p: float = 0.0
    cutout_size: int = 16
    border: str = "constant"
    fill: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    normalize: bool = True

    @classmethod
    def from_config(cls, aug: Any, mean: Sequence[float], std: Sequence[float],
                    normalize: bool = True) -> AugmentSpec:
        """From an AugmentConfig, exactly as pipeline.ops.kernel_params reads it (fill None = mean).

        `border` is read with getattr so configs written before the field existed still work."""
        fill = aug.fill if aug.fill is not None else tuple(mean)
        return cls(pad=int(aug.pad) if aug.crop else 0,
                   flip_p=float(aug.flip_p) if aug.flip else 0.0,
                   max_angle=float(aug.max_angle) if aug.rotate else 0.0,
                   cutout_p=float(aug.cutout_p) if aug.cutout else 0.0,
                   cutout_size=int(aug.cutout_size),
                   border=str(getattr(aug, "border", "constant")),
                   fill=(float(fill[0]), float(fill[1]), float(fill[2])),
                   mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                   std=(float(std[0]), float(std[1]), float(std[2])), normalize=normalize)

    @property
    def identity(self) -> bool:
        """No geometric op and no cutout can fire: the output is the (normalised) input."""
        return self.pad == 0 and self.flip_p <= 0.0 and self.max_angle == 0.0 and self.cutout_p <= 0.0


def draw_params(seed: int, epoch: int, index: torch.Tensor, spec: AugmentSpec) -> dict[str, torch.Tensor]:
    """kernels.draw_params for a batch of indices: dy, dx, cut_y, cut_x (int64), flip, do_cut
    (bool), angle (float64 degrees)."""
    return _draw(splitmix64(index.to(torch.int64) ^ epoch_key(seed, epoch)), spec)


def _draw(key: torch.Tensor, spec: AugmentSpec) -> dict[str, torch.Tensor]:
    pad = spec.pad
    dy = torch.clamp((uniform(key, 0) * (2 * pad + 1)).floor().to(torch.int64), max=2 * pad) - pad
    dx = torch.clamp((uniform(key, 1) * (2 * pad + 1)).floor().to(torch.int64), max=2 * pad) - pad
    flip = uniform(key, 2) < spec.flip_p
    angle = (2.0 * uniform(key, 3) - 1.0) * spec.max_angle
    span = W - spec.cutout_size + 1
    cut_y = torch.clamp((uniform(key, 4) * span).floor().to(torch.int64), max=span - 1)
    cut_x = torch.clamp((uniform(key, 5) * span).floor().to(torch.int64), max=span - 1)
    do_cut = uniform(key, 6) < spec.cutout_p
    return {"dy": dy, "dx": dx, "flip": flip, "angle": angle, "cut_y": cut_y, "cut_x": cut_x, "do_cut": do_cut}


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect-101 (OpenCV BORDER_REFLECT_101, np.pad mode="reflect") of index i into [0, n):
    kernels.reflect101, any number of periods away."""
    period = max(2 * n - 2, 1)
    m = torch.remainder(i, period)  # sign of the divisor: m >= 0
    return torch.where(m < n, m, period - m)


def _out_constants(spec: AugmentSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, shift, fill) float32 per channel, computed as the kernel computes them (shift in
    float64, then rounded to float32)."""
    if spec.normalize:
        inv = [1.0 / s for s in spec.std]
        scale = inv
        shift = [-m * v for m, v in zip(spec.mean, inv)]
    else:
        scale, shift = [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]
    f32 = torch.float32
    return (torch.tensor(scale, dtype=f32, device=device), torch.tensor(shift, dtype=f32, device=device),
            torch.tensor(spec.fill, dtype=f32, device=device))


def augment(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int,
            spec: AugmentSpec) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 images (dataset indices `indices`) → (N, 3, 32, 32) float32 in
    channels-last memory (normalised), or uint8 NHWC-backed likewise when spec.normalize is off.

    Same output as `kernels.augment_batch(images, dst, indices, seed, epoch, ...)` (see the module
    docstring for the tolerance)."""
    base = torch.tensor(epoch_key(seed, epoch), dtype=torch.int64, device=images.device)
    return augment_keyed(images, indices, base, spec)


def augment_keyed(images: torch.Tensor, indices: torch.Tensor, base: torch.Tensor,
                  spec: AugmentSpec) -> torch.Tensor:
    """`augment` with the (seed, epoch) key as a 0-d int64 tensor (`epoch_key`), so a compiled
    version is not re-specialised for every epoch."""
    n = images.shape[0]
    device = images.device
    scale, shift, fill = _out_constants(spec, device)
    if spec.identity:
        return _finish(images.to(torch.float32).mul_(scale).add_(shift), spec)
    p = _draw(splitmix64(indices.to(device=device, dtype=torch.int64) ^ base), spec)
    reflect = spec.border == "reflect"
    rotate = spec.max_angle != 0.0
    m = n * H * W
    # Every integer lookup reads this table: the batch's pixels as float32 rows, then one row
    # where taps outside the source point (and, without rotation, cutout pixels). Before a
    # constant-border rotation the pixels are stored minus `fill` and that row is 0, so that
    # grid_sample's zero padding blends in `fill` exactly (see _rotate).
    table = torch.empty((m + 1, 3), dtype=torch.float32, device=device)
    table[:m] = images.reshape(m, 3)
    if rotate and not reflect:
        table[:m] -= fill
        table[m] = 0.0
    else:
        table[m] = fill
    i32 = torch.int32
    ys = torch.arange(H, device=device, dtype=i32).view(1, H, 1)
    xs = torch.arange(W, device=device, dtype=i32).view(1, 1, W)
    flip = p["flip"].view(n, 1, 1)
    yi = ys + p["dy"].to(i32).view(n, 1, 1)
    # With rotation the flip is part of the sampling map; without, the whole op is one gather.
    xi = (xs if rotate else torch.where(flip, W - 1 - xs, xs)) + p["dx"].to(i32).view(n, 1, 1)
    row0 = torch.arange(n, device=device, dtype=i32).view(n, 1, 1) * (H * W)
    if reflect:
        idx = row0 + _reflect(yi, H) * W + _reflect(xi, W)
    else:
        idx = torch.where((yi >= 0) & (yi < H) & (xi >= 0) & (xi < W), row0 + yi * W + xi, m)
    cut: torch.Tensor | None = None
    if spec.cutout_p > 0.0:
        size = spec.cutout_size
        cy, cx = p["cut_y"].to(i32).view(n, 1, 1), p["cut_x"].to(i32).view(n, 1, 1)
        cut = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size) & p["do_cut"].view(n, 1, 1)
        if not rotate:
            idx = torch.where(cut, m, idx)
    out = table.index_select(0, idx.reshape(-1)).view(n, H, W, 3)  # the cropped window
    if rotate:
        out = _rotate(out, p["angle"], p["flip"], reflect)
        if not reflect:
            out = out.add_(fill)
        if cut is not None:
            out = torch.where(cut.unsqueeze(-1), fill, out)
    return _finish(out.mul_(scale).add_(shift), spec)


def _finish(out: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    if not spec.normalize:
        out = out.to(torch.uint8)  # truncation of v + 0.5: the kernel's rounding
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _rotate(window: torch.Tensor, angle: torch.Tensor, flip: torch.Tensor, reflect: bool) -> torch.Tensor:
    """Flip + bilinear rotation about the centre of each (H, W, 3) cropped window → NHWC.

    The kernel's map, output (x, y) → window (flip ? W-1-bx : bx, by) with
    bx = cos·(x-c) - sin·(y-c) + c, by = sin·(x-c) + cos·(y-c) + c, c = 15.5, is linear in
    align_corners=True normalised coordinates (square image: one scale for x and y), so one
    grid_sample does it (on the grid affine_grid would build). Taps outside the window: zero
    padding on (pixels - fill), i.e. Σ_inside w·v + (1 - Σ_inside w)·fill, the kernel's blend; or
    reflection padding, which
    for bilinear taps about pixel centres (align_corners=True) is reflect-101. Coordinates go
    through normalisation here and not in the kernel, so values differ from the kernel's by float
    rounding, within KERNEL_ATOL (docs/BENCHMARKS.md, 'torch data path')."""
    n = window.shape[0]
    rad = angle * (math.pi / 180.0)
    ca = torch.cos(rad).to(torch.float32)
    sa = torch.sin(rad).to(torch.float32)
    fs = torch.where(flip, -1.0, 1.0).to(torch.float32)
    # affine_grid's output, as broadcast arithmetic: faster on a CPU than its batched matmul
    # (docs/BENCHMARKS.md, 'Moved from code comments').
    lin = torch.linspace(-1.0, 1.0, W, device=window.device, dtype=torch.float32)
    u, v = lin.view(1, 1, W), lin.view(1, H, 1)
    ca, sa, fs = ca.view(n, 1, 1), sa.view(n, 1, 1), fs.view(n, 1, 1)
    grid = torch.stack((fs * ca * u - fs * sa * v, sa * u + ca * v), -1)
    # grid_sample reads a contiguous NCHW input faster than the channels-last view (docs/BENCHMARKS.md,
    # 'Moved from code comments').
    out = F.grid_sample(window.permute(0, 3, 1, 2).contiguous(), grid, mode="bilinear",
                        padding_mode="reflection" if reflect else "zeros", align_corners=True)
    return out.permute(0, 2, 3, 1)


def compiled_keyed() -> Callable[..., torch.Tensor]:
    """torch.compile'd `augment_keyed`: the key is a tensor, so epochs share one compilation per
    batch shape (the last, partial batch is a second shape)."""
    return torch.compile(augment_keyed, dynamic=False)
