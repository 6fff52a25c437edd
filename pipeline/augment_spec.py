"""One augmentation spec: an `AugmentConfig` as the numbers an augmenter runs with.

Both augmenters read it: the numba kernel (`kernels.augment_batch`, run by the FFCV op in
pipeline/ffcv_ops.py and by the torch loader's CPU backend) through `AugmentSpec.kernel_args`, and its
torch twin (pipeline/augment_torch.py) through the fields and `affine`. `AugmentSpec.from_config`
is the only place a config becomes a spec, so a new augmentation option is added here once.

Imports neither torch nor FFCV; numba only inside `kernel_args`, which only the numba paths call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.config import BORDERS, AugmentConfig

Triple = tuple[float, float, float]


def _triple(values: Sequence[float]) -> Triple:
    return float(values[0]), float(values[1]), float(values[2])


@dataclass(frozen=True)
class AugmentSpec:
    """What one augmenter call applies, in the kernel's order: pad + crop, flip, rotation about
    the centre, cutout, then normalisation. A switched-off op holds its neutral value (pad 0,
    probability 0, angle 0). Colours and statistics are RGB on the 0-255 scale.
    `normalize=False` gives the kernel's uint8 output (round half up)."""

    pad: int = 0
    flip_p: float = 0.0
    alternate_flip: bool = False  # the flip drawn once per image, inverted every other epoch
    max_angle: float = 0.0
    cutout_p: float = 0.0
    cutout_size: int = 16
    border: str = "constant"  # outside the image: "constant" (`fill`) or "reflect" (reflect-101)
    fill: Triple = (0.0, 0.0, 0.0)  # padding, rotation corners (constant border) and cutout
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {self.border!r}")

    @classmethod
    def from_config(cls, aug: AugmentConfig, mean: Sequence[float] = (0.0, 0.0, 0.0),
                    std: Sequence[float] = (1.0, 1.0, 1.0), normalize: bool = True,
                    border: str | None = None) -> AugmentSpec:
        """The spec of a config; `mean`/`std` are the train set's (the fill colour when the config's
        is None, and the normalisation). `border` overrides `aug.border`."""
        return cls(pad=int(aug.pad) if aug.crop else 0,
                   flip_p=float(aug.flip_p) if aug.flip else 0.0,
                   alternate_flip=bool(aug.flip and aug.alternate_flip),
                   max_angle=float(aug.max_angle) if aug.rotate else 0.0,
                   cutout_p=float(aug.cutout_p) if aug.cutout else 0.0,
                   cutout_size=int(aug.cutout_size),
                   border=aug.border if border is None else border,
                   fill=_triple(aug.fill if aug.fill is not None else mean),
                   mean=_triple(mean), std=_triple(std), normalize=normalize)

    @property
    def identity(self) -> bool:
        """No geometric op and no cutout can fire: the output is the (normalised) input."""
        return self.pad == 0 and self.flip_p <= 0.0 and self.max_angle == 0.0 and self.cutout_p <= 0.0

    def affine(self) -> tuple[Triple, Triple]:
        """(scale, shift) per channel, output = v * scale + shift, in float64 as the kernel computes
        them before rounding to float32: (1/std, -mean/std), or (1, 0.5) for uint8 output."""
        if not self.normalize:
            return (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)
        inv = _triple([1.0 / s for s in self.std])
        return inv, _triple([-m * v for m, v in zip(self.mean, inv)])

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(params, fill, mean, inv_std), float64: what `kernels.augment_batch` takes after
        (src, dst, indices, seed, epoch). `params` is laid out by the kernel's `P_*` indices."""
        from pipeline import kernels

        params = np.zeros(kernels.N_PARAMS, dtype=np.float64)
        params[kernels.P_PAD] = self.pad
        params[kernels.P_FLIP_P] = self.flip_p
        params[kernels.P_ALTERNATE_FLIP] = 1.0 if self.alternate_flip else 0.0
        params[kernels.P_MAX_ANGLE] = self.max_angle
        params[kernels.P_CUTOUT_P] = self.cutout_p
        params[kernels.P_CUTOUT_SIZE] = self.cutout_size
        params[kernels.P_NORMALIZE] = 1.0 if self.normalize else 0.0
        params[kernels.P_BORDER] = kernels.BORDER_CODES[self.border]
        mean = np.asarray(self.mean, dtype=np.float64)
        return params, np.asarray(self.fill, dtype=np.float64), mean, 1.0 / np.asarray(self.std, dtype=np.float64)


def kernel_params(aug: AugmentConfig, normalize: bool, border: str | None = None) -> np.ndarray:
    """The kernel's parameter vector for a config, for callers of `kernels.augment_batch` that
    pass their own fill and statistics (tests, `bench loader`'s op-alone row)."""
    return AugmentSpec.from_config(aug, normalize=normalize, border=border).kernel_args()[0]
