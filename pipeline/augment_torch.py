"""The numba kernel's augmentation (pipeline/kernels.py) as batched torch ops, on any device.

Why a second implementation: the torch data path (pipeline/torch_loader.py) must run where FFCV
and numba's FFCV glue cannot be installed, and on CUDA it augments batches where the images already
live, with no host work per batch. It reproduces `kernels.augment_batch` image for image:

- every random choice comes from the same counter-based hash of (seed, epoch, dataset index)
  (`splitmix64` → `image_key` → `uniforms` → `draw_params`), computed with int64 tensor ops:
  torch's int64 add and multiply wrap modulo 2**64 as numba's uint64 do, and the hash's unsigned
  right shifts are arithmetic shifts with the sign-extended top bits masked off (bit-exact: the
  tests compare every drawn parameter, angles included);
- pad + crop is one integer gather into the cropped window (`fill` or reflect-101 outside the
  source); without rotation the flip and cutout join that gather, so the batch is one lookup;
- flip + rotation about the centre is one grid_sample (bilinear) per batch over the
  window, with the kernel's border semantics (see `_rotate`); cutout paints `fill`;
  normalisation is `v * scale + shift` with the kernel's float32 constants.

What it augments with is an `AugmentSpec` (pipeline/augment_spec.py, shared with the kernel).
`TorchAugment` holds one spec's constants on one device, built once (a loader builds one), and
takes a batch's parameters as rows of a `draw_table`: the torch loader draws a whole epoch's table
in one hash call and gathers a batch's rows with one lookup, so a batch on CUDA costs no
host→device copy and a few dozen kernels.

Agreement with the kernel (tests/test_torch_loader.py holds it): float32 output within
`KERNEL_ATOL` (normalised units); uint8 output identical but for rare values (at most 0.05%) that
differ by 1 (v + 0.5 within float rounding of an integer). Measured differences: docs/BENCHMARKS.md,
'torch data path'. Bilinear interpolation is continuous, so a tap coordinate that floors the other
way changes a value by float rounding only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.augment_spec import AugmentSpec

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
    """splitmix64 on a Python int (for the (seed, epoch) part of the key)."""
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


N_DRAWS = 7  # uniform draws per image (kernels.draw_params): dy, dx, flip, angle, cut_y, cut_x, do_cut


def uniforms(key: torch.Tensor) -> torch.Tensor:
    """kernels.uniform(key, k) for k = 0..6 in one hash over n × 7 words: (n, 7) float64 in [0, 1)
    (53 random bits: exact in float64)."""
    k = key.to(torch.int64).unsqueeze(-1) + torch.arange(N_DRAWS, dtype=torch.int64, device=key.device)
    return _srl(splitmix64(k), 11).to(torch.float64) * _TO_UNIT


def draw_params(seed: int, epoch: int, index: torch.Tensor, spec: AugmentSpec) -> dict[str, torch.Tensor]:
    """kernels.draw_params for a batch of indices: dy, dx, cut_y, cut_x (int64), flip, do_cut
    (bool), angle (float64 degrees)."""
    p = _draw(uniforms(image_key(seed, epoch, index)), spec)
    if spec.alternate_flip:  # epoch 0's flip, inverted in odd epochs
        p["flip"] = (uniforms(image_key(seed, 0, index))[:, 2] < spec.flip_p) ^ bool(epoch % 2)
    return p


def _draw(u: torch.Tensor, spec: AugmentSpec) -> dict[str, torch.Tensor]:
    pad = spec.pad
    dy = torch.clamp((u[:, 0] * (2 * pad + 1)).floor().to(torch.int64), max=2 * pad) - pad
    dx = torch.clamp((u[:, 1] * (2 * pad + 1)).floor().to(torch.int64), max=2 * pad) - pad
    flip = u[:, 2] < spec.flip_p
    angle = (2.0 * u[:, 3] - 1.0) * spec.max_angle
    span = W - spec.cutout_size + 1
    cut_y = torch.clamp((u[:, 4] * span).floor().to(torch.int64), max=span - 1)
    cut_x = torch.clamp((u[:, 5] * span).floor().to(torch.int64), max=span - 1)
    do_cut = u[:, 6] < spec.cutout_p
    return {"dy": dy, "dx": dx, "flip": flip, "angle": angle, "cut_y": cut_y, "cut_x": cut_x, "do_cut": do_cut}


# Columns of a draw table: one float64 row per image, every entry exact (integers, 0/1 flags, and
# float32 values: the coefficients of the rotation's sampling grid, see `TorchAugment._rotate`).
DY, DX, FLIP, CUT_Y, CUT_X, DO_CUT, GRID_XU, GRID_XV, SIN, COS = range(10)


def draw_table(seed: int, epoch: int, index: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """(n, 10) float64: the parameters of the images with these dataset indices in this epoch, one
    row each, as `TorchAugment` applies them, so a batch takes its rows with one gather."""
    p = draw_params(seed, epoch, index, spec)
    rad = p["angle"] * (math.pi / 180.0)
    ca = torch.cos(rad).to(torch.float32)
    sa = torch.sin(rad).to(torch.float32)
    fs = torch.where(p["flip"], -1.0, 1.0).to(torch.float32)
    columns = (p["dy"], p["dx"], p["flip"], p["cut_y"], p["cut_x"], p["do_cut"], fs * ca, fs * sa, sa, ca)
    return torch.stack([c.to(torch.float64) for c in columns], 1)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect-101 (OpenCV BORDER_REFLECT_101, np.pad mode="reflect") of index i into [0, n):
    kernels.reflect101, any number of periods away."""
    period = max(2 * n - 2, 1)
    m = torch.remainder(i, period)  # sign of the divisor: m >= 0
    return torch.where(m < n, m, period - m)


def augment(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int,
            spec: AugmentSpec) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 images (dataset indices `indices`) → (N, 3, 32, 32) float32 in
    channels-last memory (normalised), or uint8 NHWC-backed likewise when spec.normalize is off.

    Same output as `kernels.augment_batch(images, dst, indices, seed, epoch, ...)` (see the module
    docstring for the tolerance). One call; a loader keeps a `TorchAugment` and a draw table."""
    augmenter = TorchAugment(spec, images.device, images.shape[0])
    if spec.identity:
        return augmenter(images, None)
    return augmenter(images, draw_table(seed, epoch, indices.to(images.device), spec))


class TorchAugment:
    """`augment` for one spec on one device. The constants (output affine, fill colour, index
    grids, the sampling grid's base) are built here once, so calls make no host→device copy.
    Call it with a batch's images and their rows of a `draw_table` (None when `spec.identity`)."""

    def __init__(self, spec: AugmentSpec, device: torch.device, batch_size: int):
        self.spec = spec
        f32, i32 = torch.float32, torch.int32
        scale, shift = spec.affine()
        self.scale = torch.tensor(scale, dtype=f32, device=device)
        self.shift = torch.tensor(shift, dtype=f32, device=device)
        self.fill = torch.tensor(spec.fill, dtype=f32, device=device)
        self.ys = torch.arange(H, device=device, dtype=i32).view(1, H, 1)
        self.xs = torch.arange(W, device=device, dtype=i32).view(1, 1, W)
        self.xs_flipped = W - 1 - self.xs
        self.row0 = torch.arange(batch_size, device=device, dtype=i32).view(-1, 1, 1) * (H * W)
        # the sampling grid's normalised coordinates (align_corners=True), as affine_grid builds them
        lin = torch.linspace(-1.0, 1.0, W, device=device, dtype=f32)
        self.u, self.v = lin.view(1, 1, W), lin.view(1, H, 1)

    def compiled(self) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """This call through torch.compile: one compilation per batch shape (the last, partial
        batch is a second shape)."""
        return torch.compile(self.__call__, dynamic=False)

    def __call__(self, images: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        spec = self.spec
        scale, shift, fill = self.scale, self.shift, self.fill
        if rows is None or spec.identity:
            return _finish(images.to(torch.float32).mul_(scale).add_(shift), spec)
        n = images.shape[0]
        reflect = spec.border == "reflect"
        rotate = spec.max_angle != 0.0
        m = n * H * W
        # Every integer lookup reads this table: the batch's pixels as float32 rows, then one row
        # where taps outside the source point (and, without rotation, cutout pixels). Before a
        # constant-border rotation the pixels are stored minus `fill` and that row is 0, so that
        # grid_sample's zero padding blends in `fill` exactly (see _rotate).
        table = torch.empty((m + 1, 3), dtype=torch.float32, device=images.device)
        table[:m] = images.reshape(m, 3)
        if rotate and not reflect:
            table[:m] -= fill
            table[m].zero_()  # not `= 0.0`: a Python scalar is a host tensor copied per call
        else:
            table[m] = fill
        ints = rows[:, :DO_CUT + 1].to(torch.int32).view(n, DO_CUT + 1, 1, 1)
        ys, xs = self.ys, self.xs
        flip = ints[:, FLIP] != 0
        yi = ys + ints[:, DY]
        # With rotation the flip is part of the sampling map; without, the whole op is one gather.
        xi = (xs if rotate else torch.where(flip, self.xs_flipped, xs)) + ints[:, DX]
        if self.row0.shape[0] < n:
            self.row0 = torch.arange(n, device=images.device, dtype=torch.int32).view(-1, 1, 1) * (H * W)
        row0 = self.row0[:n]
        if reflect:
            idx = row0 + _reflect(yi, H) * W + _reflect(xi, W)
        else:
            idx = torch.where((yi >= 0) & (yi < H) & (xi >= 0) & (xi < W), row0 + yi * W + xi, m)
        cut: torch.Tensor | None = None
        if spec.cutout_p > 0.0:
            size = spec.cutout_size
            cy, cx = ints[:, CUT_Y], ints[:, CUT_X]
            cut = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size) & (ints[:, DO_CUT] != 0)
            if not rotate:
                idx = torch.where(cut, m, idx)
        out = table.index_select(0, idx.reshape(-1)).view(n, H, W, 3)  # the cropped window
        if rotate:
            out = self._rotate(out, rows[:, GRID_XU:].to(torch.float32), reflect)
            if not reflect:
                out = out.add_(fill)
            if cut is not None:
                out = torch.where(cut.unsqueeze(-1), fill, out)
        return _finish(out.mul_(scale).add_(shift), spec)

    def _rotate(self, window: torch.Tensor, coef: torch.Tensor, reflect: bool) -> torch.Tensor:
        """Flip + bilinear rotation about the centre of each (H, W, 3) cropped window → NHWC.

        The kernel's map, output (x, y) → window (flip ? W-1-bx : bx, by) with
        bx = cos·(x-c) - sin·(y-c) + c, by = sin·(x-c) + cos·(y-c) + c, c = 15.5, is linear in
        align_corners=True normalised coordinates (square image: one scale for x and y), so one
        grid_sample does it (on the grid affine_grid would build). `coef` holds each image's
        GRID_XU..COS columns as float32: (±cos, ±sin, sin, cos), the sign the flip's. Taps outside
        the window: zero padding on (pixels - fill), i.e. Σ_inside w·v + (1 - Σ_inside w)·fill, the
        kernel's blend; or reflection padding, which for bilinear taps about pixel centres
        (align_corners=True) is reflect-101. Coordinates go through normalisation here and not in
        the kernel, so values differ from the kernel's by float rounding, within KERNEL_ATOL
        (docs/BENCHMARKS.md, 'torch data path')."""
        n = window.shape[0]
        xu, xv, sa, ca = coef.view(n, 4, 1, 1).unbind(1)
        u, v = self.u, self.v
        # affine_grid's output, as broadcast arithmetic: faster on a CPU than its batched matmul
        # (docs/BENCHMARKS.md, 'Moved from code comments').
        grid = torch.stack((xu * u - xv * v, sa * u + ca * v), -1)
        # grid_sample reads a contiguous NCHW input faster than the channels-last view (docs/BENCHMARKS.md,
        # 'Moved from code comments').
        out = F.grid_sample(window.permute(0, 3, 1, 2).contiguous(), grid, mode="bilinear",
                            padding_mode="reflection" if reflect else "zeros", align_corners=True)
        return out.permute(0, 2, 3, 1)


def _finish(out: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    if not spec.normalize:
        out = out.to(torch.uint8)  # truncation of v + 0.5: the kernel's rounding
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
