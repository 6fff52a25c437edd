"""`bench loader`: this FFCV pipeline vs torchvision's DataLoader on the same images.

(a) the train pipeline with every augmentation, (b) a torchvision DataLoader with the equivalent
transforms and the same number of workers, (c) the pipeline with no augmentation. Each FFCV
pipeline first runs one whole untimed epoch (JIT compilation and FFCV's first-epoch set-up are
excluded; start-up is timed separately by `bench startup`); then (a) and (c) are timed in
alternating rounds and the best round of each is kept, because on a shared box other jobs steal
whole slices of a round and the best is the least disturbed estimate of each pipeline's own speed.
With no `workers` given, the table covers 1 and 2 workers (FFCV's workers are numba threads),
so the per-thread scaling shows in the same run.
"""

from __future__ import annotations

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


def _ffcv_rates(data_dir: Path, batch_size: int, epochs: int, rounds: int, workers: int) -> tuple[float, float, Any]:
    """Best-of-`rounds` img/s of (a) the fully augmented and (c) the bare pipeline, alternated."""
    from pipeline.loader import make_loader

    full = make_loader(data_dir, "train", batch_size, AugmentConfig(), seed=0, workers=workers, copy=False)
    bare = make_loader(data_dir, "train", batch_size, AugmentConfig.none(), seed=0, workers=workers, copy=False)
    for loader in (full, bare):  # warm-up: one whole epoch (compilation, FFCV's first-epoch set-up)
        _time_epochs(loader, 1)
    rate_full = rate_bare = 0.0
    for _ in range(rounds):
        rate_full = max(rate_full, _time_epochs(full, epochs))
        rate_bare = max(rate_bare, _time_epochs(bare, epochs))
    return rate_full, rate_bare, full


def bench_loader(data_dir: str | Path = "data", batch_size: int = 512, epochs: int = 2,
                 tv_limit: int = 20_000, workers: int | None = None,
                 log: Callable[[str], None] = print, rounds: int = 5, torch_path: bool = True) -> dict[str, Any]:
    from bench.common import data_or_synthetic, machine, train_images

    counts = [workers] if workers else [1, 2]
    data_dir, what = data_or_synthetic(data_dir, log=log)
    log(f"timing on {what}; batch {batch_size}; FFCV: best of {rounds} alternating rounds of {epochs} "
        f"epochs after a warm-up epoch; torchvision: one pass over {tv_limit:,} images")
    images = labels = None
    rows: list[dict[str, Any]] = []
    for n in counts:
        rate_full, rate_bare, full = _ffcv_rates(data_dir, batch_size, epochs, rounds, n)
        if images is None:
            images, labels = train_images(data_dir)
        assert labels is not None
        rate_tv = _torchvision_rate(images, labels, full.info.mean, full.info.std, batch_size, n, tv_limit)
        rows.append({"workers": n, "ffcv_augmented_img_s": rate_full, "ffcv_no_aug_img_s": rate_bare,
                     "torchvision_img_s": rate_tv, "ratio": rate_full / rate_tv,
                     "augmented_vs_no_aug": rate_full / rate_bare})
    log("(a) FFCV + fused numba op: pad 4 + crop, flip, rotate ±5° bilinear, cutout 16, normalise")
    log("(b) torchvision DataLoader, equivalent transforms, same number of workers")
    log("(c) FFCV, no augmentation (decode + normalise)")
    log(f"{'workers':>7} | {'(a) img/s':>10} | {'(c) img/s':>10} | {'(b) img/s':>9} | {'a/c':>5} | {'a/b':>6} "
        f"| {'(a) per worker':>14} | {'(c) per worker':>14}")
    for r in rows:
        log(f"{r['workers']:>7} | {r['ffcv_augmented_img_s']:>10,.0f} | {r['ffcv_no_aug_img_s']:>10,.0f} | "
            f"{r['torchvision_img_s']:>9,.0f} | {100 * r['augmented_vs_no_aug']:>4.0f}% | {r['ratio']:>5.1f}x "
            f"| {r['ffcv_augmented_img_s'] / r['workers']:>14,.0f} | {r['ffcv_no_aug_img_s'] / r['workers']:>14,.0f}")
    scaling: dict[str, float] = {}
    if len(rows) > 1:
        one, many = rows[0], rows[-1]
        k = many["workers"] / one["workers"]
        for key, name in (("ffcv_augmented_img_s", "augmented"), ("ffcv_no_aug_img_s", "no_aug")):
            scaling[name] = many[key] / (k * one[key])
        log(f"per-worker img/s at {many['workers']} workers vs 1: (a) {100 * (scaling['augmented'] - 1):+.0f}%, "
            f"(c) {100 * (scaling['no_aug'] - 1):+.0f}%")
    torch_rows = _torch_path_rows(data_dir, batch_size, epochs, last_ffcv=rows[-1], log=log) if torch_path else []
    last = rows[-1]
    return {"benchmark": "loader", "data": what, "batch_size": batch_size, "workers": last["workers"],
            "torch_path": torch_rows,
            "ffcv_augmented_img_s": last["ffcv_augmented_img_s"], "torchvision_img_s": last["torchvision_img_s"],
            "ffcv_no_aug_img_s": last["ffcv_no_aug_img_s"], "ratio": last["ratio"],
            "augmented_vs_no_aug": last["augmented_vs_no_aug"], "by_workers": rows,
            "per_worker_scaling": scaling, "rounds": rounds, "epochs": epochs, "machine": machine()}


def _torch_path_rows(data_dir: Path, batch_size: int, epochs: int, last_ffcv: dict[str, Any],
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """(d) the torch data path (`--loader torch`) with every augmentation, in the same run: its CPU
    default (the numba kernel called directly, no FFCV) and pure torch ops (what it runs on a GPU),
    each as a ratio to (a) and to (b) at the same thread count."""
    import torch

    from bench.torch_loader import bench_torch_loader

    threads = torch.get_num_threads()
    torch.set_num_threads(int(last_ffcv["workers"]))
    try:
        rows = []
        for backend in ("numba", "torch"):
            (row,) = bench_torch_loader(data_dir, batch_size, epochs, "cpu", backend=backend, configs=("all",),
                                        log=lambda m: None)
            row["vs_ffcv"] = row["img_s"] / last_ffcv["ffcv_augmented_img_s"]
            row["vs_torchvision"] = row["img_s"] / last_ffcv["torchvision_img_s"]
            rows.append(row)
            log(f"(d) torch path, {backend} augment, {last_ffcv['workers']} thread(s): {row['img_s']:>10,.0f} img/s = "
                f"{row['vs_ffcv']:.2f} × (a), {row['vs_torchvision']:.1f} × (b)")
    finally:
        torch.set_num_threads(threads)
    return rows
