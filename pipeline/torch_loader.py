"""The torch data path: prepared .npz arrays held as one uint8 tensor per split on the training
device, batches gathered and augmented there by pipeline/augment_torch.py. Needs only torch and
numpy: no FFCV, no numba.

A `SplitLoader` (pipeline/loaders.py), like the FFCV path's, so training, evaluation and the
benchmarks take either. Augmentation is image for image the FFCV path's (same
(seed, epoch, index) hash); the shuffle order is this module's own pure function of (seed, epoch)
(an argsort of splitmix64 hashes: the same on every device and torch version), not FFCV's.

Why it exists: where FFCV cannot be installed, and on a GPU, where the whole train split (150 MB)
fits in device memory and a batch costs a gather plus a few elementwise kernels, with no host work
or host→device copy per batch.

On the CPU, eager torch ops are several times slower at this than the FFCV path, so there the
loader augments with the numba kernel itself when numba imports (`augment_backend="auto"`; numba
needs no FFCV and is in requirements-noffcv.txt, since prepare uses it too): the same kernel and
pixels, at least FFCV's speed (measurements: docs/BENCHMARKS.md, 'torch data path';
bench/torch_loader.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from common.config import AugmentConfig
from common.errors import UserError
from pipeline.augment_spec import AugmentSpec
from pipeline.augment_torch import TorchAugment, draw_table, epoch_key, splitmix64
from pipeline.loaders import LoaderInfo, plan_split
from pipeline.manifest import read_arrays, read_manifest

# Salt that separates the shuffle's hash stream from the augmentation's (same seed and epoch).
_ORDER_SALT = 0x5EED_0F_0DE5


def shuffle_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(count), a pure function of (seed, epoch): splitmix64 is a bijection
    of 64-bit words, so the hashed keys never tie and argsort needs no tie-break."""
    key = epoch_key(seed ^ _ORDER_SALT, epoch)
    return torch.argsort(splitmix64(torch.arange(count, dtype=torch.int64) ^ key))


class TorchCifarLoader:
    """A `SplitLoader`: iterates (images, labels), float32 NCHW channels-last, normalised; int64
    labels; both on the loader's device. Every batch is a new tensor, so kept batches never change.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: AugmentSpec,
                 seed: int, shuffle: bool, drop_last: bool, info: LoaderInfo, device: torch.device,
                 rank: int = 0, world: int = 1, compile_augment: bool = False, backend: str = "torch",
                 index: torch.Tensor | None = None):
        self.images = images
        # Dataset index of each held image: augmentation is hashed by it (as FFCV's op is), and
        # order() reports it, also when the loader holds a subset such as train minus validation.
        self.index = index if index is not None else torch.arange(len(labels), device=device)
        self.labels = labels
        self._batch_size = batch_size
        self.spec = spec
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.info = info
        self.device = device
        self.rank, self.world = rank, world
        self._epoch = 0
        self.backend = backend  # "torch" (augment_torch) or "numba" (kernels.augment_batch, CPU only)
        # The torch backend's constants live on the device from here on (no per-batch copies).
        augmenter = TorchAugment(spec, device, batch_size)
        self._augment: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] = (
            augmenter.compiled() if compile_augment else augmenter)
        # DistributedSampler's split: every rank reads ceil(count / world) indices, the shuffled
        # order padded with its own start when the count does not divide.
        self.per_rank = math.ceil(len(labels) / world)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self._batch_size
        return math.ceil(self.per_rank / self._batch_size)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce (0-based)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Jump to an epoch: shuffle order and augmentation are functions of (seed, epoch)."""
        self._epoch = epoch

    def _order(self, epoch: int) -> torch.Tensor:
        count = len(self.labels)
        full = shuffle_order(count, self.seed, epoch) if self.shuffle else torch.arange(count)
        if self.world > 1:
            total = self.per_rank * self.world
            reps = math.ceil(total / count)
            full = full.repeat(reps)[:total][self.rank::self.world]
        return full

    def order(self) -> np.ndarray:
        """Dataset indices of the next epoch in the order this process will read them (its shard
        under torchrun, padded with repeats to equal length, as DistributedSampler does)."""
        return self.index.cpu()[self._order(self._epoch)].numpy()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        order = self._order(epoch).to(self.device)
        bs = self._batch_size
        if self.backend == "numba":
            yield from self._iter_numba(order, epoch)
            return
        # The epoch's augmentation parameters for every held image, in one call; a batch gathers its rows.
        rows = None if self.spec.identity else draw_table(self.seed, epoch, self.index, self.spec)
        for b in range(len(self)):
            sel = order[b * bs:(b + 1) * bs]
            images = self.images.index_select(0, sel)
            batch_rows = None if rows is None else rows.index_select(0, sel)
            yield self._augment(images, batch_rows), self.labels.index_select(0, sel)

    def _iter_numba(self, order: torch.Tensor, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from pipeline import kernels

        params, fill, mean, inv_std = self.spec.kernel_args()
        images = self.images.numpy()
        index = self.index.numpy()
        order_np = order.numpy()
        bs = self._batch_size
        for b in range(len(self)):
            sel = order_np[b * bs:(b + 1) * bs]
            dst = np.empty((len(sel), 32, 32, 3), dtype=np.float32)  # a new buffer per batch
            ids = index[sel]
            kernels.augment_batch(images[sel], dst, ids, self.seed, epoch, params, fill, mean, inv_std)
            yield torch.from_numpy(dst).permute(0, 3, 1, 2), self.labels[torch.from_numpy(sel)]


def _backend(name: str, device: torch.device) -> str:
    if name not in ("auto", "torch", "numba"):
        raise UserError(f"augment backend must be auto, torch or numba, got {name!r}")
    if name == "numba" and device.type != "cpu":
        raise UserError(f"the numba augment backend runs on the CPU only, not on {device}; use torch")
    if name == "auto":
        if device.type != "cpu":
            return "torch"
        try:
            import numba  # noqa: F401
        except ImportError:
            return "torch"
        return "numba"
    return name


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UserError("distributed=True needs an initialised torch.distributed process group "
                        "(start the command with torchrun)")
    return dist.get_rank(), dist.get_world_size()


def make_torch_loader(data_dir: str | Path, split: str, batch_size: int, aug: AugmentConfig | None = None, *,
                      seed: int = 0, device: str | torch.device = "cpu", subset: int | None = None,
                      shuffle: bool | None = None, drop_last: bool | None = None, distributed: bool = False,
                      indices: np.ndarray | None = None, compile_augment: bool = False,
                      augment_backend: str = "auto") -> TorchCifarLoader:
    """pipeline.ffcv_loader.make_loader's twin over the prepared .npz arrays.

    Defaults follow the split (pipeline.loaders.plan_split): train shuffles, augments and drops the
    last partial batch; test keeps order, has no augmentation and keeps every image. The work runs
    in torch's own intra-op threads (torch.set_num_threads). `compile_augment` runs the augmentation
    through torch.compile (one fused kernel per batch shape on CUDA; seconds to compile; on a CPU
    no faster than eager with every augmentation: docs/BENCHMARKS.md, 'torch data path').
    `augment_backend`: "torch" (augment_torch, any device), "numba" (the numba kernel, CPU only),
    "auto" (numba on the CPU where it imports, else torch).
    """
    manifest = read_manifest(data_dir)
    device = torch.device(device)
    plan = plan_split(manifest, split, batch_size, aug, shuffle, drop_last, subset, indices)
    aug, shuffle, drop_last, count = plan.aug, plan.shuffle, plan.drop_last, plan.count
    held = np.arange(count) if plan.indices is None else plan.indices
    backend = _backend(augment_backend, device)
    rank, world = _dist_rank_world() if distributed else (0, 1)
    images, labels = read_arrays(data_dir, split, manifest)
    mean, std = manifest["train_mean"], manifest["train_std"]
    spec = AugmentSpec.from_config(aug, mean, std)
    info = LoaderInfo(split, count, list(mean), list(std), list(manifest["classes"]))
    return TorchCifarLoader(torch.from_numpy(np.ascontiguousarray(images[held])).to(device),
                            torch.from_numpy(labels[held]).to(device), batch_size, spec, seed, shuffle,
                            drop_last, info, device, rank, world, compile_augment, backend,
                            index=torch.from_numpy(held).to(device))
