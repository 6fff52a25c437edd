"""`bench loader`: this FFCV pipeline vs torchvision's DataLoader on the same images.

(a) the train pipeline with every augmentation, (b) a torchvision DataLoader with the equivalent
transforms and the same number of workers, (c) the pipeline with no augmentation. Each FFCV figure
is taken after one untimed warm-up epoch, so JIT compilation is excluded (start-up is timed
separately by `bench startup`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.config import AugmentConfig


def _time_epochs(loader: Any, epochs: int) -> float:
    n = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def _torchvision_rate(images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float],
                      batch_size: int, workers: int, limit: int) -> float:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    tf = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(5), T.ToTensor(),
        T.Normalize([m / 255 for m in mean], [s / 255 for s in std]),
        # Cutout 16×16 with p 0.5: RandomErasing with a fixed 16×16 area (scale 256/1024, ratio 1).
        T.RandomErasing(p=0.5, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0),
    ])

    class Images(Dataset):
        def __len__(self) -> int:
            return min(len(labels), limit)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(images[i])), int(labels[i])

    loader = DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=False)
    return _time_epochs(loader, 1)


def bench_loader(data_dir: str | Path = "data", batch_size: int = 512, epochs: int = 2,
                 tv_limit: int = 20_000, workers: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.common import data_or_synthetic, machine, train_images
    from pipeline.loader import make_loader

    workers = workers or os.cpu_count() or 1
    data_dir, what = data_or_synthetic(data_dir, log=log)
    log(f"timing on {what}; batch {batch_size}, {workers} workers")
    full = make_loader(data_dir, "train", batch_size, AugmentConfig(), seed=0, workers=workers, copy=False)
    bare = make_loader(data_dir, "train", batch_size, AugmentConfig.none(), seed=0, workers=workers, copy=False)
    for loader in (full, bare):  # warm-up: compile
        next(iter(loader))
    rate_full = _time_epochs(full, epochs)
    rate_bare = _time_epochs(bare, epochs)
    log(f"(a) FFCV + fused numba augment (crop, flip, rotate, cutout, normalise): {rate_full:>10,.0f} img/s")
    log(f"(c) FFCV, no augmentation (decode + normalise):                        {rate_bare:>10,.0f} img/s")
    images, labels = train_images(data_dir)
    rate_tv = _torchvision_rate(images, labels, full.info.mean, full.info.std, batch_size, workers, tv_limit)
    log(f"(b) torchvision DataLoader, equivalent transforms, {workers} workers:          {rate_tv:>10,.0f} img/s")
    ratio = rate_full / rate_tv
    log(f"ratio a/b = {ratio:.1f}x   (augmentation costs {100 * (1 - rate_full / rate_bare):.0f}% vs c)")
    return {"benchmark": "loader", "data": what, "batch_size": batch_size, "workers": workers,
            "ffcv_augmented_img_s": rate_full, "torchvision_img_s": rate_tv, "ffcv_no_aug_img_s": rate_bare,
            "ratio": ratio, "machine": machine()}
