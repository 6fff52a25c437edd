"""numba kernels for train-time augmentation, compiled once and cached on disk.

Everything random is derived from (seed, epoch, dataset index) by a counter-based hash, never from
numba's per-thread `np.random`, so a batch is the same whichever thread builds it and however many
threads there are. Kernels are module-level with `cache=True`: FFCV compiles its own pipeline
glue on every start (it never uses numba's cache), so the expensive code lives here, where the
cache does apply.

The fused kernel applies, in this order, exactly what the separate ops would: pad+crop (a
translation with `fill` outside the source), horizontal flip, rotation about the centre (bilinear,
`fill` outside the cropped window), cutout; then optionally normalises. One read of the source and
one write of the output per image is what makes it fast: measured on the 2-core dev box it runs at
~10× torchvision's per-image transforms (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53

# Layout of the float64 parameter vector handed to the kernel (one array keeps the signature,
# and so the numba cache key, stable as options are added).
P_PAD, P_FLIP_P, P_MAX_ANGLE, P_CUTOUT_P, P_CUTOUT_SIZE, P_NORMALIZE = range(6)
N_PARAMS = 6


@numba.njit(cache=True, inline="always")
def splitmix64(x):
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def image_key(seed, epoch, index):
    k = splitmix64(np.uint64(seed))
    k = splitmix64(k ^ np.uint64(epoch))
    return splitmix64(k ^ np.uint64(index))


@numba.njit(cache=True, inline="always")
def uniform(key, k):
    """The k-th uniform draw in [0, 1) for one image."""
    return float(splitmix64(key + np.uint64(k)) >> _S11) * _TO_UNIT


@numba.njit(cache=True)
def draw_params(seed, epoch, index, params):
    """Per-image augmentation parameters: (dy, dx, flip, angle_deg, cut_y, cut_x, do_cut).

    dy/dx in [-pad, pad] (the crop offset minus pad); cut_y/cut_x the cutout's top-left corner,
    the square always inside the 32×32 image.
    """
    key = image_key(seed, epoch, index)
    pad = int(params[P_PAD])
    dy = min(int(uniform(key, 0) * (2 * pad + 1)), 2 * pad) - pad
    dx = min(int(uniform(key, 1) * (2 * pad + 1)), 2 * pad) - pad
    flip = uniform(key, 2) < params[P_FLIP_P]
    angle = (2.0 * uniform(key, 3) - 1.0) * params[P_MAX_ANGLE]
    size = int(params[P_CUTOUT_SIZE])
    span = 32 - size + 1
    cy = min(int(uniform(key, 4) * span), span - 1)
    cx = min(int(uniform(key, 5) * span), span - 1)
    do_cut = uniform(key, 6) < params[P_CUTOUT_P]
    return dy, dx, flip, angle, cy, cx, do_cut


@numba.njit(cache=True, fastmath=True, inline="always")
def _shift_image(src, dst, dy, dx, flip, fill, scale, shift):
    """No rotation: a pure shift (and mirror), no interpolation; ~2× the bilinear path's speed.
    The test pipeline and crop/flip-only recipes take this path."""
    h, w, _ = src.shape
    for y in range(h):
        sy = y + dy
        for x in range(w):
            sx = (w - 1 - x if flip else x) + dx
            if 0 <= sy < h and 0 <= sx < w:
                for c in range(3):
                    dst[y, x, c] = np.float32(src[sy, sx, c]) * scale[c] + shift[c]
            else:
                for c in range(3):
                    dst[y, x, c] = fill[c] * scale[c] + shift[c]


@numba.njit(cache=True, fastmath=True, inline="always")
def _warp_image(src, dst, dy, dx, ax, bxy, cx, ay, by_, cy, fill, scale, shift):
    """One bilinear lookup per output pixel through source = A · (x, y) + c.

    A neighbour is used only when it lies inside the source image *and* inside the cropped window;
    otherwise it counts as `fill`, exactly as sequential pad+crop → flip → rotate would have it.
    """
    h, w, _ = src.shape
    x_lo = max(0, dx)
    x_hi = min(w - 1, w - 1 + dx)
    y_lo = max(0, dy)
    y_hi = min(h - 1, h - 1 + dy)
    one = np.float32(1.0)
    s0, s1, s2 = scale[0], scale[1], scale[2]
    t0, t1, t2 = shift[0], shift[1], shift[2]
    img = src.reshape(-1)  # flat HWC views: one multiply-add per lookup instead of four
    out = dst.reshape(-1)
    row = w * 3
    for y in range(h):
        fy_ = np.float32(y)
        row_x = bxy * fy_ + cx + np.float32(2.0)  # +2 keeps coordinates positive, so int()
        row_y = by_ * fy_ + cy + np.float32(2.0)  # truncation is floor (math.floor is slower)
        for x in range(w):
            fx_ = np.float32(x)
            sx = ax * fx_ + row_x
            sy = ay * fx_ + row_y
            x0 = int(sx)
            y0 = int(sy)
            wx = sx - np.float32(x0)
            wy = sy - np.float32(y0)
            x0 -= 2
            y0 -= 2
            w00 = (one - wx) * (one - wy)
            w01 = wx * (one - wy)
            w10 = (one - wx) * wy
            w11 = wx * wy
            o = (y * w + x) * 3
            if x0 >= x_lo and x0 < x_hi and y0 >= y_lo and y0 < y_hi:
                b = y0 * row + x0 * 3
                r = b + row
                out[o] = (w00 * np.float32(img[b]) + w01 * np.float32(img[b + 3])
                          + w10 * np.float32(img[r]) + w11 * np.float32(img[r + 3])) * s0 + t0
                out[o + 1] = (w00 * np.float32(img[b + 1]) + w01 * np.float32(img[b + 4])
                              + w10 * np.float32(img[r + 1]) + w11 * np.float32(img[r + 4])) * s1 + t1
                out[o + 2] = (w00 * np.float32(img[b + 2]) + w01 * np.float32(img[b + 5])
                              + w10 * np.float32(img[r + 2]) + w11 * np.float32(img[r + 5])) * s2 + t2
            else:
                ok00 = x_lo <= x0 <= x_hi and y_lo <= y0 <= y_hi
                ok01 = x_lo <= x0 + 1 <= x_hi and y_lo <= y0 <= y_hi
                ok10 = x_lo <= x0 <= x_hi and y_lo <= y0 + 1 <= y_hi
                ok11 = x_lo <= x0 + 1 <= x_hi and y_lo <= y0 + 1 <= y_hi
                for c in range(3):
                    f = fill[c]
                    v = (w00 * (np.float32(src[y0, x0, c]) if ok00 else f)
                         + w01 * (np.float32(src[y0, x0 + 1, c]) if ok01 else f)
                         + w10 * (np.float32(src[y0 + 1, x0, c]) if ok10 else f)
                         + w11 * (np.float32(src[y0 + 1, x0 + 1, c]) if ok11 else f))
                    out[o + c] = v * scale[c] + shift[c]


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def augment_batch(src, dst, indices, seed, epoch, params, fill, mean, inv_std):
    """src: (B, H, W, 3) uint8 → dst: (B, H, W, 3) float32 (normalised) or uint8.

    Crop offset, flip and rotation compose into one affine map from output pixel to source
    coordinates, so each output pixel is one bilinear lookup. A source pixel may be used only
    when it lies inside the source image *and* inside the cropped window, which is what
    the sequential ops (pad+crop, then flip, then rotate) would have seen.
    """
    n, h, w, _ = src.shape
    normalize = params[P_NORMALIZE] > 0.5
    size = int(params[P_CUTOUT_SIZE])
    c0 = np.float32((w - 1) * 0.5)
    r0 = np.float32((h - 1) * 0.5)
    # Per-channel affine output transform: normalised = v * scale + shift, or v itself (+ rounding).
    scale = np.empty(3, np.float32)
    shift = np.empty(3, np.float32)
    for c in range(3):
        scale[c] = inv_std[c] if normalize else 1.0
        shift[c] = -mean[c] * inv_std[c] if normalize else 0.5
    fill32 = fill.astype(np.float32)
    for i in prange(n):
        dy, dx, flip, angle, cut_y, cut_x, do_cut = draw_params(seed, epoch, indices[i], params)
        rad = angle * (math.pi / 180.0)
        ca = np.float32(math.cos(rad))
        sa = np.float32(math.sin(rad))
        # output (y, x) → rotated-from point in the flipped window (bx, by):
        #   bx = ca (x - c0) - sa (y - r0) + c0,   by = sa (x - c0) + ca (y - r0) + r0
        # window → source: sx = (flip ? w-1-bx : bx) + dx,   sy = by + dy
        fs = np.float32(-1.0) if flip else np.float32(1.0)
        ax = fs * ca
        bxy = -fs * sa
        cx = fs * (c0 - ca * c0 + sa * r0) + (np.float32(w - 1) if flip else np.float32(0.0)) + np.float32(dx)
        ay = sa
        by_ = ca
        cy = r0 - sa * c0 - ca * r0 + np.float32(dy)
        if angle == 0.0:
            _shift_image(src[i], dst[i], dy, dx, flip, fill32, scale, shift)
        else:
            _warp_image(src[i], dst[i], dy, dx, ax, bxy, cx, ay, by_, cy, fill32, scale, shift)
        if do_cut:
            for y in range(cut_y, cut_y + size):
                for x in range(cut_x, cut_x + size):
                    for c in range(3):
                        dst[i, y, x, c] = fill32[c] * scale[c] + shift[c]
    return dst
