"""FFCV Operations for CIFAR-10: one fused augment-and-normalise op.

In the shape of FFCV's own transforms: the Operation declares its output buffer and returns a
small function that FFCV compiles into its pipeline; the heavy lifting is `kernels.augment_batch`,
which numba caches on disk. FFCV passes an op nothing but the batch, its buffer and the sample
indices, so the epoch (needed for per-epoch randomness) is read through a raw pointer into a
two-int array owned by the op: `set_epoch` writes it before FFCV starts the epoch's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numba
import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from common.config import AugmentConfig
from pipeline import kernels
from pipeline.augment_spec import AugmentSpec


@intrinsic
def _as_pointer(typingctx, address):
    """int64 address → void*, so compiled code can read memory that Python keeps updating."""
    sig = types.voidptr(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


class AugmentNormalize(Operation):
    """Pad+crop, flip, rotate, cutout and normalise in one pass over each image.

    With every augmentation off it is a plain normalise (the test pipeline). `normalize=False`
    keeps uint8 output, for CUDA, where 4× smaller host→device copies win and the GPU normalises.
    `border` overrides `aug.border` ("constant": `fill` outside the image; "reflect": reflect-101).
    """

    def __init__(self, aug: AugmentConfig, mean: Sequence[float], std: Sequence[float],
                 seed: int = 0, normalize: bool = True, border: str | None = None):
        super().__init__()
        spec = AugmentSpec.from_config(aug, mean, std, normalize, border)
        self.params, self.fill, self.mean, self.inv_std = spec.kernel_args()
        self.out_dtype = np.dtype(np.float32 if normalize else np.uint8)
        self.seed_epoch = np.array([seed, 0], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.seed_epoch[1] = epoch

    def generate_code(self) -> Callable:
        address = self.seed_epoch.ctypes.data
        params, fill, mean, inv_std = self.params, self.fill, self.mean, self.inv_std
        kernel = kernels.augment_batch

        def augment_normalize(images, dst, indices):
            # typingctx is the compiler's argument to an @intrinsic, not the caller's
            seed_epoch = numba.carray(_as_pointer(address), 2, np.int64)  # type: ignore[call-arg]
            return kernel(images, dst, indices, seed_epoch[0], seed_epoch[1], params, fill, mean, inv_std)

        augment_normalize.with_indices = True  # type: ignore[attr-defined]  # FFCV reads this flag
        return augment_normalize

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | None]:
        return (replace(previous_state, jit_mode=True, dtype=self.out_dtype),
                AllocationQuery(previous_state.shape, self.out_dtype))
