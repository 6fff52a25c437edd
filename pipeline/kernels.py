"""numba kernels for train-time augmentation, compiled once and cached on disk.

Everything random is derived from (seed, epoch, dataset index) by a counter-based hash, never from
numba's per-thread `np.random`, so a batch is the same whichever thread builds it and however many
threads there are. Kernels are module-level with `cache=True`: FFCV compiles its own pipeline
glue on every start (it never uses numba's cache), so the expensive code lives here, where the
cache does apply.

The fused kernel applies, in this order, exactly what the separate ops would: pad+crop, horizontal
flip, rotation about the centre (bilinear), cutout; then optionally normalises. One read of the
source and one write of the output per image is what makes it fast (docs/BENCHMARKS.md).

Border modes (`P_BORDER`), i.e. what pad+crop and the rotation's bilinear taps see outside the image:

* constant (0): `fill`. A tap is the source pixel only when it lies inside the source image *and*
  inside the cropped 32×32 window; otherwise it is `fill` (sequential pad-with-fill → crop → flip →
  rotate-with-fill, each bilinear tap judged on its own).
* reflect (1): reflect-101 (OpenCV's BORDER_REFLECT_101, np.pad's mode="reflect", albumentations'
  default: ``...dcb|abcd|cba...``, the edge pixel not repeated), `r(t)` below. Sequentially:
  ``P = np.pad(src, pad, mode="reflect")``; window ``W[v, u] = P[v + dy + pad, u + dx + pad]``
  (= ``src[r(v + dy), r(u + dx)]``); flipped window ``F[v, u] = W[v, 31 - u]`` when flipping; the
  rotation samples F bilinearly and maps *each* of the four taps (tv, tu) that falls outside the
  32×32 window to ``F[r(tv), r(tu)]`` (cv2.warpAffine with BORDER_REFLECT_101, INTER_LINEAR,
  WARP_INVERSE_MAP). Because r commutes with the flip (r(31 - t) = 31 - r(t)), a tap at pre-flip
  window position (v, u) reads ``src[r(r(v) + dy), r(r(u) + dx)]``, whatever the flip.
* Cutout always paints the constant `fill` colour, in both modes.

``r(t)`` for length n: ``m = t mod (2n - 2)`` (non-negative), then ``m if m < n else 2n - 2 - m``.

How the warp is computed (its speed and the variants tried: docs/BENCHMARKS.md, 'loader: faster
fused kernel'): the (pre-flip) cropped window plus a margin `frame` wide enough for every tap of a rotation up to
`max_angle` is first materialised as float32 (constant mode: the margin and the out-of-source strip
hold `fill`; reflect mode: the reflected pixels), so every output pixel is the same branch-free
four-tap lookup and no tap needs a border test. Per output row, a first loop computes source
coordinates, floors, the four weights and the tap offset for all 32 pixels (LLVM vectorises it:
zmm code); a second, scalar loop does the 12 loads and multiply-adds per pixel (LLVM emits no
gathers for it, whatever the layout), skipping the pixels a cutout square will cover. Offsets are
unsigned: numba adds a negative-index wrap-around (compare + cmov) to every load through a signed
index, which cost about as much as the arithmetic. The float form of each tap and weight (the
affine map, a +2 offset before flooring, the four-weight sum) is part of what a (seed, epoch,
index) means: another form rounds some taps the other way, so the same image would be augmented
differently from the runs already trained (the reference tests allow for bilinear rounding and
would not notice; docs/BENCHMARKS.md, 'Moved from code comments').
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
P_PAD, P_FLIP_P, P_MAX_ANGLE, P_CUTOUT_P, P_CUTOUT_SIZE, P_NORMALIZE, P_BORDER, P_ALTERNATE_FLIP = range(8)
N_PARAMS = 8
BORDER_CONSTANT, BORDER_REFLECT = 0, 1
BORDER_CODES = {"constant": BORDER_CONSTANT, "reflect": BORDER_REFLECT}

# The per-image helpers below are plain njit calls, not numba-inlined: the call costs nothing
# measurable per image, and inlining everything made augment_batch's cold compile much slower
# (measurements: docs/BENCHMARKS.md, 'loader: faster fused kernel').

# Images per parallel work item; each item allocates its scratch (window buffer, per-row tap
# table) once, so the allocation count does not grow with the batch (it is no faster than
# allocating per image: docs/BENCHMARKS.md, 'loader: faster fused kernel'). Results do not depend
# on it.
CHUNK = 8


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
    the square always inside the 32×32 image. With `P_ALTERNATE_FLIP` set, the flip is drawn once
    per image and inverted every other epoch, so any two consecutive epochs show each image both
    ways (airbench's alternating flip); otherwise it is drawn anew each epoch.
    """
    key = image_key(seed, epoch, index)
    pad = int(params[P_PAD])
    dy = min(int(uniform(key, 0) * (2 * pad + 1)), 2 * pad) - pad
    dx = min(int(uniform(key, 1) * (2 * pad + 1)), 2 * pad) - pad
    if params.shape[0] > P_ALTERNATE_FLIP and params[P_ALTERNATE_FLIP] > 0.5:
        # drawn once per image (epoch 0's draw), inverted in odd epochs
        flip = (uniform(image_key(seed, 0, index), 2) < params[P_FLIP_P]) != (epoch % 2 == 1)
    else:
        flip = uniform(key, 2) < params[P_FLIP_P]
    angle = (2.0 * uniform(key, 3) - 1.0) * params[P_MAX_ANGLE]
    size = int(params[P_CUTOUT_SIZE])
    span = 32 - size + 1
    cy = min(int(uniform(key, 4) * span), span - 1)
    cx = min(int(uniform(key, 5) * span), span - 1)
    do_cut = uniform(key, 6) < params[P_CUTOUT_P]
    return dy, dx, flip, angle, cy, cx, do_cut


@numba.njit(cache=True, inline="always")
def reflect101(t, n):
    """Index t folded into [0, n) by reflect-101 (…dcb|abcd|cba…), any number of periods away."""
    period = 2 * n - 2
    if period <= 0:
        return 0
    m = t % period  # numba keeps Python's sign rule: m >= 0
    return m if m < n else period - m


@numba.njit(cache=True)
def frame_width(max_angle, h, w):
    """Margin (pixels) around the h×w window that any bilinear tap of a rotation about the centre
    by |angle| <= max_angle can reach: the corners swing out by at most reach - half-size."""
    a = min(abs(max_angle), 180.0) * (math.pi / 180.0)
    c0 = (w - 1) * 0.5
    r0 = (h - 1) * 0.5
    radius = math.hypot(c0, r0)
    over = 0.0
    for p, q in ((c0, r0), (r0, c0)):  # x reach c0|cos| + r0|sin|, y reach r0|cos| + c0|sin|
        phi = math.atan2(q, p)
        reach = radius if a >= phi else radius * math.cos(a - phi)
        over = max(over, reach - p)
    return int(math.ceil(over)) + 1  # +1: the second tap of a pixel, and float slack


@numba.njit(cache=True, fastmath=True, inline="always")
def _shift_image(src, dst, dy, dx, flip, fill, scale, shift):
    """No rotation: a pure shift (and mirror), no interpolation; ~2.4× the bilinear path's speed.
    The test pipeline and crop/flip-only recipes take this path (constant border)."""
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


@numba.njit(cache=True, fastmath=True)
def _shift_image_reflect(src, dst, dy, dx, flip, scale, shift):
    """_shift_image with a reflect-101 border: every pixel is a source pixel. Kept apart so the
    constant path (which the no-augmentation pipeline runs) stays the code it was."""
    h, w, _ = src.shape
    for y in range(h):
        sy = reflect101(y + dy, h)
        for x in range(w):
            sx = reflect101((w - 1 - x if flip else x) + dx, w)
            for c in range(3):
                dst[y, x, c] = np.float32(src[sy, sx, c]) * scale[c] + shift[c]


@numba.njit(cache=True, fastmath=True)
def _build_window(src, buf, frame, dy, dx, reflect, fill_row):
    """buf[v + frame, u + frame] = what the pre-flip cropped window shows at row v, column u, for
    u, v in [-frame, 31 + frame]: the source pixel (as float32), `fill` or a reflected pixel.

    A small part of an image's cost next to the warp (docs/BENCHMARKS.md, 'Moved from code
    comments'); each row's in-source span is one contiguous uint8 → float32 conversion.
    """
    h, w, _ = src.shape
    hb, wb, _ = buf.shape
    lo = max(0, -dx)  # window columns [lo, hi) map to source columns inside the image
    hi = max(lo, min(w, w - dx))
    flat_src = src.reshape(-1)
    flat = buf.reshape(-1)
    n_row = wb * 3
    a = (frame + lo) * 3  # the in-source span of a buffer row: [a, b)
    b = (frame + hi) * 3
    s0 = (lo + dx) * 3
    # Explicit loops over unsigned offsets: faster than three slice assignments per row, and than
    # 3-D indexing or signed flat offsets (numba's negative-index checks on every store);
    # measurements: docs/BENCHMARKS.md, 'loader: faster fused kernel'.
    for bv in range(hb):
        v = bv - frame
        o = np.uint64(bv * n_row)
        if reflect:
            sy = reflect101(reflect101(v, h) + dy, h)
        else:
            sy = v + dy
            if not (0 <= v < h and 0 <= sy < h):
                for k in range(n_row):
                    flat[o + np.uint64(k)] = fill_row[k]
                continue
        ob = o + np.uint64(a)
        os_ = np.uint64(sy * w * 3 + s0)
        for k in range(b - a):
            uk = np.uint64(k)
            flat[ob + uk] = np.float32(flat_src[os_ + uk])
        if reflect:
            for bu in range(frame + lo):
                su = reflect101(reflect101(bu - frame, w) + dx, w)
                for c in range(3):
                    buf[bv, bu, c] = np.float32(src[sy, su, c])
            for bu in range(frame + hi, wb):
                su = reflect101(reflect101(bu - frame, w) + dx, w)
                for c in range(3):
                    buf[bv, bu, c] = np.float32(src[sy, su, c])
        else:
            for k in range(a):
                flat[o + np.uint64(k)] = fill_row[k]
            for k in range(b, n_row):
                flat[o + np.uint64(k)] = fill_row[k]


@numba.njit(cache=True, fastmath=True, inline="always")
def _blend_span(img, out, taps, wts, row, o_row, x_a, x_b, scale, shift):
    """Output pixels x_a..x_b-1 of one row from the tap table: 12 loads, 12 multiply-adds and the
    output affine per pixel. All offsets unsigned (no wrap-around code on the loads)."""
    s0, s1, s2 = scale[0], scale[1], scale[2]
    t0, t1, t2 = shift[0], shift[1], shift[2]
    u1, u2, u3, u4, u5 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4), np.uint64(5)
    for x in range(x_a, x_b):
        b = taps[x]
        r = b + row
        w00 = wts[0, x]
        w01 = wts[1, x]
        w10 = wts[2, x]
        w11 = wts[3, x]
        o = np.uint64(o_row + 3 * x)
        out[o] = (w00 * img[b] + w01 * img[b + u3] + w10 * img[r] + w11 * img[r + u3]) * s0 + t0
        out[o + u1] = (w00 * img[b + u1] + w01 * img[b + u4] + w10 * img[r + u1] + w11 * img[r + u4]) * s1 + t1
        out[o + u2] = (w00 * img[b + u2] + w01 * img[b + u5] + w10 * img[r + u2] + w11 * img[r + u5]) * s2 + t2


@numba.njit(cache=True, fastmath=True)
def _warp_image(buf, frame, dst, dy, dx, ax, bxy, cx, ay, by_, cy, scale, shift,
                skip_y0, skip_y1, skip_x0, skip_x1, taps, wts):
    """One bilinear lookup per output pixel through source = A · (x, y) + c, read from the
    materialised window `buf` (see _build_window), so no pixel needs a border test.

    Output pixels in rows [skip_y0, skip_y1) × columns [skip_x0, skip_x1) are not computed (the
    cutout square, painted afterwards).
    """
    h, w, _ = dst.shape
    hb, wb, _ = buf.shape
    one = np.float32(1.0)
    img = buf.reshape(-1)
    out = dst.reshape(-1)
    row = wb * 3
    xmax = wb - 2
    ymax = hb - 2
    # source column x0 → buffer column x0 - dx + frame; the -2 undoes the +2 below
    offx = frame - dx - 2
    offy = frame - dy - 2
    for y in range(h):
        fy_ = np.float32(y)
        row_x = bxy * fy_ + cx + np.float32(2.0)  # +2, undone by offx/offy: part of the float form
        row_y = by_ * fy_ + cy + np.float32(2.0)  # that fixes how each tap rounds (module docstring)
        for x in range(w):  # vectorised by LLVM (16 lanes)
            fx_ = np.float32(x)
            sx = ax * fx_ + row_x
            sy = ay * fx_ + row_y
            x0 = int(sx)
            y0 = int(sy)
            x0 -= np.float32(x0) > sx  # floor for negative coordinates too (large angles)
            y0 -= np.float32(y0) > sy
            wx = sx - np.float32(x0)
            wy = sy - np.float32(y0)
            bx = min(max(x0 + offx, 0), xmax)  # a no-op while `frame` covers the taps; keeps
            bv = min(max(y0 + offy, 0), ymax)  # every load inside the buffer regardless
            wts[0, x] = (one - wx) * (one - wy)
            wts[1, x] = wx * (one - wy)
            wts[2, x] = (one - wx) * wy
            wts[3, x] = wx * wy
            taps[x] = np.uint64(bv * row + bx * 3)
        o_row = y * w * 3
        # two spans either side of the cutout square, or the whole row and an empty span: one
        # code path, as each inlined copy of the span loop lengthens a cold compile
        cut = skip_y0 <= y < skip_y1
        end_a = skip_x0 if cut else w
        start_b = skip_x1 if cut else w
        _blend_span(img, out, taps, wts, np.uint64(row), o_row, 0, end_a, scale, shift)
        _blend_span(img, out, taps, wts, np.uint64(row), o_row, start_b, w, scale, shift)


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def augment_batch(src, dst, indices, seed, epoch, params, fill, mean, inv_std):
    """src: (B, H, W, 3) uint8 → dst: (B, H, W, 3) float32 (normalised) or uint8.

    Crop offset, flip and rotation compose into one affine map from output pixel to source
    coordinates, so each output pixel is one bilinear lookup; what a tap outside the image or
    the cropped window reads is set by the border mode (module docstring).
    """
    n, h, w, _ = src.shape
    normalize = params[P_NORMALIZE] > 0.5
    reflect = params.shape[0] > P_BORDER and params[P_BORDER] > 0.5
    size = int(params[P_CUTOUT_SIZE])
    c0 = np.float32((w - 1) * 0.5)
    r0 = np.float32((h - 1) * 0.5)
    frame = frame_width(params[P_MAX_ANGLE], h, w)
    # Per-channel affine output transform: normalised = v * scale + shift, or v itself (+ rounding).
    scale = np.empty(3, np.float32)
    shift = np.empty(3, np.float32)
    for c in range(3):
        scale[c] = inv_std[c] if normalize else 1.0
        shift[c] = -mean[c] * inv_std[c] if normalize else 0.5
    fill32 = fill.astype(np.float32)
    fill_row = np.empty((w + 2 * frame) * 3, np.float32)  # one buffer row of `fill`
    for k in range(w + 2 * frame):
        for c in range(3):
            fill_row[3 * k + c] = fill32[c]
    n_chunks = (n + CHUNK - 1) // CHUNK
    for chunk in prange(n_chunks):
        buf = np.empty((h + 2 * frame, w + 2 * frame, 3), np.float32)
        taps = np.empty(w, np.uint64)
        wts = np.empty((4, w), np.float32)
        for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            dy, dx, flip, angle, cut_y, cut_x, do_cut = draw_params(seed, epoch, indices[i], params)
            if angle == 0.0:
                if reflect:
                    _shift_image_reflect(src[i], dst[i], dy, dx, flip, scale, shift)
                else:
                    _shift_image(src[i], dst[i], dy, dx, flip, fill32, scale, shift)
            else:
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
                _build_window(src[i], buf, frame, dy, dx, reflect, fill_row)
                cut_rows = size if do_cut else 0
                _warp_image(buf, frame, dst[i], dy, dx, ax, bxy, cx, ay, by_, cy, scale, shift,
                            cut_y, cut_y + cut_rows, cut_x, cut_x + size, taps, wts)
            if do_cut:
                for y in range(cut_y, cut_y + size):
                    for x in range(cut_x, cut_x + size):
                        for c in range(3):
                            dst[i, y, x, c] = fill32[c] * scale[c] + shift[c]
    return dst
