"""The fused kernel's reflect-101 border mode against numpy (np.pad mode="reflect") and OpenCV.

Sequential reference: ``np.pad(img, pad, mode="reflect")`` → crop → flip → rotate about
((w-1)/2, (h-1)/2) with bilinear sampling whose out-of-window taps are reflect-101 mapped
(cv2.warpAffine, INTER_LINEAR, BORDER_REFLECT_101, WARP_INVERSE_MAP) → cutout with `fill`.
Two rotation references: an exact float64 numpy one, and OpenCV itself on float32 images (measured
within 7e-4 grey levels of the numpy one, smooth or noise images, 5° to 180°; OpenCV's 1/32-pixel
fixed-point positions apply to its uint8 path, not used here). The kernel's uint8 output rounds to
nearest, so it is within 0.5 (+ float slack) of either: that is the tolerance.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest

from common.config import AugmentConfig, TrainConfig
from pipeline import kernels
from pipeline.augment_spec import kernel_params
from pipeline.ffcv_ops import AugmentNormalize
from tests.test_kernels import (
    FILL,
    MEAN,
    STD,
    H,
    W,
    diff,
    find_index,
    images,
    run_kernel,
    same_at_1_and_2_threads,
    smooth_images,
    to_uint8,
)


def reflect_params(**kw) -> np.ndarray:
    base: dict[str, Any] = dict(crop=False, flip=False, rotate=False, cutout=False)
    base.update(kw)
    return kernel_params(AugmentConfig(**base), False, border="reflect")


def crop_reflect_ref(img, dy, dx, pad):
    padded = np.pad(np.asarray(img, dtype=np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[dy + pad:dy + pad + H, dx + pad:dx + pad + W].copy()


def rotate_reflect_ref(img, angle):
    """Exact bilinear rotation (the kernel's convention: about (15.5, 15.5), positive = counter-
    clockwise on screen), each of the four taps folded into the window by reflect-101."""
    img = np.asarray(img, dtype=np.float64)
    c = (W - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    t = math.radians(angle)
    bx = math.cos(t) * (xx - c) - math.sin(t) * (yy - c) + c
    by = math.sin(t) * (xx - c) + math.cos(t) * (yy - c) + c
    x0, y0 = np.floor(bx), np.floor(by)
    wx, wy = bx - x0, by - y0
    x0, y0 = x0.astype(int), y0.astype(int)
    pad = 64  # np.pad's reflect index for any tap within 64 pixels
    idx = np.pad(np.arange(W), pad, mode="reflect")
    out = np.zeros((H, W, 3))
    for ky, kx, wgt in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                        (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        out += wgt[..., None] * img[idx[y0 + ky + pad], idx[x0 + kx + pad]]
    return out


def rotate_cv2(img, angle):
    """OpenCV's warpAffine with the kernel's inverse map: output (x, y) samples window point
    (ca (x-c) - sa (y-c) + c, sa (x-c) + ca (y-c) + c)."""
    c = (W - 1) / 2
    t = math.radians(angle)
    ca, sa = math.cos(t), math.sin(t)
    m = np.array([[ca, -sa, c - ca * c + sa * c], [sa, ca, c - sa * c - ca * c]])
    return cv2.warpAffine(np.asarray(img, dtype=np.float32), m, (W, H),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101).astype(np.float64)


def compose_reflect_ref(img, p, pad, size, rotate=rotate_reflect_ref, fill=FILL):
    dy, dx, flip, angle, cut_y, cut_x, do_cut = p
    out = crop_reflect_ref(img, dy, dx, pad)
    if flip:
        out = out[:, ::-1]
    if angle != 0.0:
        out = rotate(out, angle)
    out = np.array(out)
    if do_cut:
        out[cut_y:cut_y + size, cut_x:cut_x + size] = fill
    return out


# --------------------------------------------------------------------------------- parameters

def test_reflect101_is_numpys_reflect():
    for n in (32, 5, 2):
        ref = np.pad(np.arange(n), 3 * n, mode="reflect")
        got = [kernels.reflect101(t, n) for t in range(-3 * n, 4 * n)]
        np.testing.assert_array_equal(got, ref)
    assert kernels.reflect101(-7, 1) == 0


def test_border_parameter():
    assert kernel_params(AugmentConfig(), False)[kernels.P_BORDER] == kernels.BORDER_CONSTANT
    assert kernel_params(AugmentConfig(), False, border="reflect")[kernels.P_BORDER] == kernels.BORDER_REFLECT

    # a config recorded before the `border` field existed: read back with the field's default, constant
    old = TrainConfig.from_dict({"augment": {"crop": True, "pad": 4, "flip": True, "rotate": True}}).augment
    assert kernel_params(old, False)[kernels.P_BORDER] == kernels.BORDER_CONSTANT
    with pytest.raises(ValueError, match="border"):
        kernel_params(AugmentConfig(), False, border="wrap")
    op = AugmentNormalize(AugmentConfig(), MEAN.tolist(), STD.tolist(), border="reflect")
    assert op.params[kernels.P_BORDER] == kernels.BORDER_REFLECT
    aug = AugmentConfig()
    aug.border = "reflect"  # the config field, where present, is what the op reads by default
    assert AugmentNormalize(aug, MEAN.tolist(), STD.tolist()).params[kernels.P_BORDER] == kernels.BORDER_REFLECT


@pytest.mark.parametrize("max_angle", [5.0, 30.0, 90.0, 180.0])
def test_frame_covers_every_tap(max_angle):
    frame = kernels.frame_width(max_angle, H, W)
    c = (W - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    for t in np.radians(np.linspace(-max_angle, max_angle, 721)):
        bx = math.cos(t) * (xx - c) - math.sin(t) * (yy - c) + c
        by = math.sin(t) * (xx - c) + math.cos(t) * (yy - c) + c
        for v in (bx, by):
            assert np.floor(v).min() >= -frame and np.floor(v).max() + 1 <= W - 1 + frame


# ------------------------------------------------------------------------------ each op alone

@pytest.mark.parametrize("pad", [4, 2, 16])
def test_crop_reflect_matches_np_pad(pad):
    params = reflect_params(crop=True, pad=pad)
    n = 64
    src = images(n, seed=21)
    out = run_kernel(src, np.arange(n) + 300, params)
    hit = set()
    for k in range(n):
        dy, dx, *_ = kernels.draw_params(3, 1, 300 + k, params)
        hit |= {dy, dx}
        np.testing.assert_array_equal(out[k], crop_reflect_ref(src[k], dy, dx, pad).astype(np.uint8))
    assert {-pad, pad} <= hit or pad == 16  # extreme offsets exercised (pad 16: 33 values, 64 draws)


def test_crop_and_flip_reflect_shift_path():
    params = reflect_params(crop=True, pad=4, flip=True, flip_p=0.5)
    n = 48
    src = images(n, seed=22)
    out = run_kernel(src, np.arange(n), params)
    for k in range(n):
        p = kernels.draw_params(3, 1, k, params)
        assert p[3] == 0.0
        np.testing.assert_array_equal(out[k], compose_reflect_ref(src[k], p, 4, 16).astype(np.uint8))


def test_flip_and_cutout_do_not_depend_on_border():
    src = images(16, seed=23)
    idx = np.arange(16)
    off: dict[str, Any] = dict(crop=False, flip=False, rotate=False, cutout=False)
    ons: list[dict[str, Any]] = [dict(flip=True, flip_p=1.0), dict(cutout=True, cutout_p=1.0, cutout_size=9)]
    for kw in ons:
        const = kernel_params(AugmentConfig(**{**off, **kw}), False)
        np.testing.assert_array_equal(run_kernel(src, idx, reflect_params(**kw)), run_kernel(src, idx, const))


@pytest.mark.parametrize("max_angle", [5.0, 30.0, 180.0])
def test_rotate_reflect_matches_numpy_and_cv2(max_angle):
    params = reflect_params(rotate=True, max_angle=max_angle)
    i, p = find_index(params, lambda dy, dx, fl, a, *r: abs(a) > 0.6 * max_angle)
    angle = p[3]
    smooth = smooth_images(1, seed=24)[0]
    for src in (smooth, images(1, seed=24)[0]):
        out = run_kernel(src[None], [i], params)[0]
        assert diff(out, to_uint8(rotate_reflect_ref(src, angle))).max() <= 1
        assert diff(out, rotate_reflect_ref(src, angle)).max() <= 0.5 + 1e-3
        assert diff(out, rotate_cv2(src, angle)).max() <= 0.5 + 2e-3
    out = run_kernel(smooth[None], [i], params)[0]
    # border pixels really are reflected: constant mode differs there
    const = kernel_params(AugmentConfig(crop=False, flip=False, rotate=True, max_angle=max_angle, cutout=False), False)
    assert diff(run_kernel(smooth[None], [i], const)[0], out).max() > 10


# ------------------------------------------------------------------------------- composition

def test_all_ops_reflect_equal_sequential_reference():
    aug = AugmentConfig()
    params = kernel_params(aug, False, border="reflect")
    n = 96
    src = np.concatenate([smooth_images(n // 2, seed=25), images(n // 2, seed=25)])
    out = run_kernel(src, np.arange(n) + 700, params)
    combos = set()
    worst_cv2 = 0.0
    for k in range(n):
        p = kernels.draw_params(3, 1, 700 + k, params)
        combos.add((bool(p[2]), bool(p[6])))
        exact = compose_reflect_ref(src[k], p, aug.pad, aug.cutout_size)
        assert diff(out[k], to_uint8(exact)).max() <= 1, (k, p)
        seq = compose_reflect_ref(src[k], p, aug.pad, aug.cutout_size, rotate=rotate_cv2)
        worst_cv2 = max(worst_cv2, diff(out[k], seq).max())
    assert worst_cv2 <= 0.5 + 2e-3, worst_cv2
    assert combos == {(False, False), (False, True), (True, False), (True, True)}


def test_all_ops_reflect_noise_image_pinned_index():
    aug = AugmentConfig(pad=3, cutout_size=9, max_angle=20.0)
    params = kernel_params(aug, False, border="reflect")
    i, p = find_index(params, lambda dy, dx, fl, a, cy, cx, cut: fl and cut and dy < 0 < dx and a < -10.0,
                      seed=3, epoch=1)
    src = images(1, seed=26)
    out = run_kernel(src, [i], params)[0]
    assert diff(out, to_uint8(compose_reflect_ref(src[0], p, 3, 9))).max() <= 1
    assert diff(out, compose_reflect_ref(src[0], p, 3, 9, rotate=rotate_cv2)).max() <= 0.5 + 2e-3


def test_reflect_normalised_is_unrounded_uint8_and_thread_independent():
    params = kernel_params(AugmentConfig(), False, border="reflect")
    u1, f1 = same_at_1_and_2_threads(images(32, seed=27), np.arange(32) * 5 + 1, params)
    assert diff(f1.astype(np.float64) * STD + MEAN, u1).max() <= 0.5 + 1e-3
