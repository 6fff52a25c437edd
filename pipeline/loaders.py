"""The data path's contract: what a loader is, how one split is planned, and which path opens it.

Two implementations, picked by `open_loader` (`--loader ffcv|torch|auto`, `resolve_loader` says
which and why):

- pipeline/ffcv_loader.py: FFCV betons, decoded and augmented by numba threads on the host
  (the fused op, pipeline/ffcv_ops.py); needs FFCV and its system libraries.
- pipeline/torch_loader.py: the prepared .npz arrays held as tensors on the training device and
  augmented there (pipeline/augment_torch.py; on the CPU the numba kernel itself); needs only torch.

Both give the same augmented pixels for the same (seed, epoch, image) and follow the same split
rules (`plan_split`); they differ in shuffle order, in what they need installed and in where the
per-batch work runs. Both are a `SplitLoader`. This module imports neither FFCV nor numba: it only
asks whether FFCV imports, and opens the FFCV path only when it is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from common.config import LOADERS, AugmentConfig
from common.errors import UserError
from pipeline.manifest import ffcv_missing, has_betons, read_manifest

# What `auto` picks on CUDA when FFCV is usable: to be decided from the GPU benchmark (`bench
# loader` / `bench train` on a GPU, not yet run). Until then "ffcv", the path the GPU figures
# in docs/BENCHMARKS.md will have been planned around; the torch path needs no host work per batch
# and may well win there.
AUTO_ON_CUDA = "ffcv"


@dataclass
class LoaderInfo:
    split: str
    count: int  # images this loader draws from (after --subset)
    mean: list[float]
    std: list[float]
    classes: list[str]


class SplitLoader(Protocol):
    """One split's batches: what training, evaluation and the benchmarks iterate.

    Iterating yields (images, labels): images float32 (N, 3, 32, 32) in channels-last memory,
    normalised by the train set's statistics; labels int64 (N,); both on the loader's device.
    Each iteration is one epoch, after which `epoch` has advanced by one. Shuffle order and
    augmentation are functions of (seed, epoch), so `set_epoch` followed by skipping k batches
    resumes an interrupted epoch exactly.
    """

    info: LoaderInfo

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int:
        """Batches per epoch (this process's share under torchrun)."""
        ...

    @property
    def batch_size(self) -> int: ...

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce (0-based)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Jump to an epoch."""
        ...

    def order(self) -> np.ndarray:
        """Dataset indices of the next epoch in the order this process will read them (its shard
        under torchrun, padded with repeats to equal length, as DistributedSampler does)."""
        ...


def available_cpus() -> int:
    """Cores this process may run on (affinity, cgroup cpusets and SLURM included); FFCV's own
    default, multiprocessing.cpu_count(), counts every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class SplitPlan:
    """What a loader over one split reads and how: the same rules for the FFCV and torch paths."""

    aug: AugmentConfig
    shuffle: bool
    drop_last: bool
    indices: np.ndarray | None  # dataset indices to draw from; None = the whole split
    count: int  # images drawn from


def plan_split(manifest: dict[str, Any], split: str, batch_size: int, aug: AugmentConfig | None,
               shuffle: bool | None, drop_last: bool | None, subset: int | None,
               indices: np.ndarray | None) -> SplitPlan:
    """Defaults follow the split: train shuffles, augments and drops the last partial batch; test
    keeps order, has no augmentation and keeps every image. `indices` (e.g. the training set less
    the validation split) win over `subset` (the first N images)."""
    is_train = split == "train"
    aug = aug if aug is not None else (AugmentConfig() if is_train else AugmentConfig.none())
    shuffle = is_train if shuffle is None else shuffle
    drop_last = is_train if drop_last is None else drop_last
    count = manifest["splits"][split]["count"]
    if subset is not None:
        if subset < 1:
            raise UserError(f"--subset must be at least 1, got {subset}")
        count = min(subset, count)
        indices = np.arange(count) if indices is None else indices
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        count = len(indices)
    if drop_last and count < batch_size:
        raise UserError(f"the {split} set has {count} images, fewer than one batch of {batch_size}; "
                        "lower --batch-size or raise --subset")
    return SplitPlan(aug, shuffle, drop_last, indices, count)


def ffcv_import_error() -> str | None:
    """None when FFCV imports, else why not (one clause). The first call costs FFCV's import (seconds);
    torch's thread count, which importing FFCV resets, is put back."""
    threads = torch.get_num_threads()
    try:
        return ffcv_missing()
    finally:
        torch.set_num_threads(threads)


def resolve_loader(name: str, device: torch.device | str,
                   data_dir: str | Path | None = None) -> tuple[str, str]:
    """(kind, reason): kind is "ffcv" or "torch". With `data_dir`, its manifest says whether the
    betons exist (data prepared without FFCV has only the .npz arrays)."""
    if name not in LOADERS:
        raise UserError(f"--loader must be one of {', '.join(LOADERS)}, got {name!r}")
    device = torch.device(device)
    if name == "torch":
        return "torch", "--loader torch"
    missing = ffcv_import_error()
    betons = True if data_dir is None else has_betons(read_manifest(data_dir))
    if name == "ffcv":
        if missing is not None:
            raise UserError(f"--loader ffcv: FFCV does not import here ({missing}); install it (scripts/setup.sh "
                            "installs requirements.lock and its system libraries) or use --loader torch")
        if not betons:
            raise UserError(f"--loader ffcv: {data_dir}/ was prepared without FFCV and has no .beton files; run "
                            f"`python cli.py prepare --out {data_dir} --force` where FFCV imports, or use --loader torch")
        return "ffcv", "--loader ffcv"
    if missing is not None:
        return "torch", f"auto: FFCV does not import ({missing})"
    if not betons:
        return "torch", f"auto: {data_dir}/ has no .beton files (prepared without FFCV)"
    if device.type == "cuda":
        return AUTO_ON_CUDA, f"auto: {AUTO_ON_CUDA} on CUDA (pipeline.loaders.AUTO_ON_CUDA)"
    return "ffcv", "auto: FFCV imports and the betons exist"


def open_loader(kind: str, data_dir: str | Path, split: str, batch_size: int, aug: AugmentConfig | None = None, *,
                seed: int = 0, device: str | torch.device = "cpu", workers: int | None = None,
                subset: int | None = None, distributed: bool = False, indices: np.ndarray | None = None,
                shuffle: bool | None = None, drop_last: bool | None = None, copy: bool = True) -> SplitLoader:
    """One split's loader on the path `kind` ("ffcv" or "torch", as `resolve_loader` returns).

    Split defaults as `plan_split`. `workers` (numba threads) and `copy` concern the FFCV path
    only: FFCV reuses its batch buffers, so a batch kept past the next few iterations changes
    under the caller unless copied; a caller that consumes each batch at once (the trainer)
    passes copy=False. The torch path runs in torch's own threads and every batch is new.
    """
    if kind == "ffcv":
        from pipeline.ffcv_loader import make_loader

        return make_loader(data_dir, split, batch_size, aug, seed=seed, device=device, workers=workers,
                           subset=subset, shuffle=shuffle, drop_last=drop_last, copy=copy,
                           distributed=distributed, indices=indices)
    if kind == "torch":
        from pipeline.torch_loader import make_torch_loader

        return make_torch_loader(data_dir, split, batch_size, aug, seed=seed, device=device, subset=subset,
                                 shuffle=shuffle, drop_last=drop_last, distributed=distributed, indices=indices)
    raise ValueError(f"loader kind must be ffcv or torch, got {kind!r} (resolve_loader turns --loader into one)")
