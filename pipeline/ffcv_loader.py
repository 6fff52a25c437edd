"""The FFCV data path (pipeline/loaders.py's `SplitLoader` over FFCV betons): train (augmented,
shuffled) and test (normalised, in order). Imported only where FFCV is used.

FFCV's "workers" are numba threads in this process. Two of its habits are handled here so callers
need not know them: importing FFCV (and every epoch start) resets torch's thread count to the
loader's worker count, and it reuses batch buffers, so a batch kept past the next few iterations
would change under the caller unless copied (`copy=True`, the default; the trainer consumes each
batch at once and turns it off for images; labels are always copied).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import AugmentConfig
from common.errors import UserError
from pipeline.loaders import LoaderInfo, available_cpus, plan_split
from pipeline.manifest import beton_path, read_manifest


def _import_ffcv():
    threads = torch.get_num_threads()
    import ffcv  # noqa: F401  (its import sets torch to 1 thread; undo that)
    torch.set_num_threads(threads)
    return ffcv


class CifarLoader:
    """A `SplitLoader`: iterates (images, labels), float32 NCHW channels-last, normalised; int64 labels."""

    def __init__(self, loader: Any, op: Any, device: torch.device, info: LoaderInfo,
                 normalize_on_device: bool, copy: bool):
        self.loader = loader
        self.op = op
        self.device = device
        self.info = info
        self.copy = copy
        self.normalize_on_device = normalize_on_device
        if normalize_on_device:
            self._mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
            self._inv_std = (1.0 / torch.tensor(info.std, device=device)).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce (0-based)."""
        return self.loader.next_epoch

    def order(self) -> np.ndarray:
        """Dataset indices of the next epoch in the order this process will read them (its shard
        under torchrun, padded with repeats to equal length, as DistributedSampler does)."""
        return np.asarray(self.loader.traversal_order.sample_order(self.loader.next_epoch))

    def set_epoch(self, epoch: int) -> None:
        """Jump to an epoch: shuffle order and augmentation are functions of (seed, epoch)."""
        self.loader.next_epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        threads = torch.get_num_threads()
        self.op.set_epoch(self.loader.next_epoch)
        iterator = iter(self.loader)
        torch.set_num_threads(threads)  # FFCV's __iter__ resets it to num_workers
        try:
            for images, labels in iterator:
                if self.normalize_on_device:
                    images = (images.float() - self._mean) * self._inv_std
                elif self.copy:
                    images = images.clone(memory_format=torch.channels_last)
                # Labels are tiny: always copy, so keeping them (evaluation does) is safe.
                labels = labels.clone()
                yield images, labels
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _open_reader_checked(path: Path) -> None:
    """Fail with one sentence on a beton FFCV cannot read or that lacks our fields."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
        handlers = reader.handlers
        n = int(reader.num_samples)
    except Exception as exc:  # FFCV raises assorted errors on a damaged file
        raise UserError(f"{path} is not a readable FFCV beton ({type(exc).__name__}); rebuild it with "
                        f"`python cli.py prepare --out {path.parent} --force`") from None
    fields = {name: type(h) for name, h in handlers.items()}
    if set(fields) != {"image", "label"} or not issubclass(fields["image"], RGBImageField) \
            or not issubclass(fields["label"], IntField):
        raise UserError(f"{path} holds fields {sorted(fields)}, not the image/label pair this toolkit "
                        f"writes; rebuild it with `python cli.py prepare --out {path.parent} --force`")
    if n < 1:
        raise UserError(f"{path} holds no images; rebuild it with `python cli.py prepare --force`")
    # FFCV reads the allocation table at the end of the file with np.fromfile and silently takes
    # fewer entries when it is cut short: images then pair with the wrong labels or the process
    # aborts in free(). Every sample must have an allocation.
    ids = np.asarray(reader.alloc_table["sample_id"])
    if len(ids) < n or not np.array_equal(np.unique(ids), np.arange(n)):
        raise UserError(f"{path} is truncated or corrupt (its allocation table covers {len(np.unique(ids))} "
                        f"of {n} images); rebuild it with `python cli.py prepare --out {path.parent} --force`")


def device_stage(device: torch.device) -> list[Any]:
    """The host→GPU copy at the end of a pipeline (nothing on CPU).

    `non_blocking=False` on purpose. FFCV builds batch k+4 into the pinned host buffer that batch k
    was copied from, and only makes its *stream* (not the CPU) wait for the GPU work of batch k: a
    non-blocking copy of batch k still queued behind GPU work would then read the next batch's
    pixels (FFCV issue #37: garbage batches with non_blocking). A blocking copy returns only when
    the bytes are on the GPU, so the buffer is free when FFCV reuses it. It runs in FFCV's worker
    thread, overlapping the model's step on the main thread; `bench gpu`'s race probe checks
    every label against the loader's order while the GPU is kept busy.
    """
    if device.type != "cuda":
        return []
    from ffcv.transforms import ToDevice

    return [ToDevice(device, non_blocking=False)]


def make_loader(data_dir: str | Path, split: str, batch_size: int, aug: AugmentConfig | None = None,
                seed: int = 0, device: str | torch.device = "cpu", workers: int | None = None,
                subset: int | None = None, shuffle: bool | None = None, drop_last: bool | None = None,
                copy: bool = True, distributed: bool = False, indices: np.ndarray | None = None) -> CifarLoader:
    """Build the train or test loader described by the data folder's manifest.

    Defaults follow the split: train shuffles, augments and drops the last partial batch; test
    keeps order, has no augmentation and keeps every image.
    """
    _import_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    from pipeline.ffcv_ops import AugmentNormalize

    manifest = read_manifest(data_dir)
    path = beton_path(data_dir, split)
    expected = manifest["splits"][split].get("bytes")
    if expected is not None and path.stat().st_size != expected:
        raise UserError(f"{path} is {path.stat().st_size:,} bytes but prepare wrote {expected:,}; it is "
                        f"truncated or was replaced: rebuild it with `python cli.py prepare --out {data_dir} --force`")
    _open_reader_checked(path)
    device = torch.device(device)
    plan = plan_split(manifest, split, batch_size, aug, shuffle, drop_last, subset, indices)
    aug, shuffle, drop_last, indices, count = plan.aug, plan.shuffle, plan.drop_last, plan.indices, plan.count
    mean, std = manifest["train_mean"], manifest["train_std"]
    on_cuda = device.type == "cuda"
    op = AugmentNormalize(aug, mean, std, seed=seed, normalize=not on_cuda)
    image_pipe: list[Any] = [SimpleRGBImageDecoder(), op, ToTensor()]
    # Squeeze(1), not Squeeze(): with no dimension a batch of ONE label becomes a 0-d tensor, which
    # cross_entropy rejects on CPU and FFCV's ToDevice raises on in its worker thread, leaving a
    # CUDA run waiting forever (a rank's test share of 501 = 500 + 1 did it).
    label_pipe: list[Any] = [IntDecoder(), ToTensor(), Squeeze(1)]
    image_pipe += device_stage(device)
    label_pipe += device_stage(device)
    image_pipe.append(ToTorchImage(channels_last=True))
    loader = Loader(str(path), batch_size=batch_size, num_workers=workers or available_cpus(),
                    order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
                    seed=seed, indices=indices, drop_last=drop_last, distributed=distributed,
                    pipelines={"image": image_pipe, "label": label_pipe}, os_cache=True)
    info = LoaderInfo(split, count, list(mean), list(std), list(manifest["classes"]))
    return CifarLoader(loader, op, device, info, normalize_on_device=on_cuda, copy=copy)
