"""`bench loader`: this FFCV pipeline vs torchvision's DataLoader on the same images.

(a) the train pipeline with every augmentation, (b) a torchvision DataLoader with the equivalent
transforms and the same number of workers, (c) the pipeline with no augmentation. Each FFCV
pipeline first runs one whole untimed epoch (JIT compilation and FFCV's first-epoch set-up are
excluded; start-up is timed separately by `bench startup`); then (a) and (c) are timed in
alternating rounds and the best round of each is kept, because on a shared box other jobs steal
whole slices of a round and the best is the least disturbed estimate of each pipeline's own speed.
With no `workers` given, the table covers 1 and 2 workers (FFCV's workers are numba threads),
so the per-thread scaling shows in the same run. Every FFCV row is timed before any torchvision
row: torchvision's forked workers and torch ops left the later FFCV rows slower under numba's
OpenMP layer (docs/BENCHMARKS.md, 'loader per-thread scaling: the numba threading layer').
(e) times the fused op alone, without FFCV, at each thread count: its own scaling,
apart from FFCV's per-batch work. The numba threading layer the process ran under is printed and
recorded; it decides the per-thread scaling (docs/BENCHMARKS.md, issue 17).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from bench.common import alternated_best, data_or_synthetic, machine, train_images
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
    from pipeline.ffcv_loader import make_loader

    full = make_loader(data_dir, "train", batch_size, AugmentConfig(), seed=0, workers=workers, copy=False)
    bare = make_loader(data_dir, "train", batch_size, AugmentConfig.none(), seed=0, workers=workers, copy=False)
    for loader in (full, bare):  # warm-up: one whole epoch (compilation, FFCV's first-epoch set-up)
        _time_epochs(loader, 1)
    rate_full, rate_bare = alternated_best([functools.partial(_time_epochs, loader, epochs) for loader in (full, bare)],
                                           rounds)
    return rate_full, rate_bare, full


def bench_loader(data_dir: str | Path = "data", batch_size: int = 512, epochs: int = 2,
                 tv_limit: int = 20_000, workers: int | None = None,
                 log: Callable[[str], None] = print, rounds: int = 5, torch_path: bool = True) -> dict[str, Any]:
    from pipeline.numba_threads import prefer_threading_layer

    prefer_threading_layer(torch_on_cpu=False)  # the loader alone, as when it feeds a GPU
    counts = [workers] if workers else [1, 2]
    data_dir, what = data_or_synthetic(data_dir, log=log)
    log(f"timing on {what}; batch {batch_size}; FFCV: best of {rounds} alternating rounds of {epochs} "
        f"epochs after a warm-up epoch; torchvision: one pass over {tv_limit:,} images")
    ffcv_rows = [(n, *_ffcv_rates(data_dir, batch_size, epochs, rounds, n)) for n in counts]
    layer = numba.threading_layer()  # known once a parallel region has run
    images, labels = train_images(data_dir)
    info = ffcv_rows[0][3].info
    op_rates = _op_rates(images, np.asarray(info.mean), np.asarray(info.std), batch_size, counts, rounds)
    rows: list[dict[str, Any]] = []
    for n, rate_full, rate_bare, full in ffcv_rows:
        rate_tv = _torchvision_rate(images, labels, full.info.mean, full.info.std, batch_size, n, tv_limit)
        rows.append({"workers": n, "ffcv_augmented_img_s": rate_full, "ffcv_no_aug_img_s": rate_bare,
                     "torchvision_img_s": rate_tv, "ratio": rate_full / rate_tv,
                     "augmented_vs_no_aug": rate_full / rate_bare, "op_alone_img_s": op_rates[n]})
    log("(a) FFCV + fused numba op: pad 4 + crop, flip, rotate ±5° bilinear, cutout 16, normalise")
    log("(b) torchvision DataLoader, equivalent transforms, same number of workers")
    log("(c) FFCV, no augmentation (decode + normalise)")
    log("(e) the fused op alone (no FFCV), same batches, every augmentation")
    log(f"numba threading layer: {layer} (set NUMBA_THREADING_LAYER to choose; see docs/BENCHMARKS.md)")
    log(f"{'workers':>7} | {'(a) img/s':>10} | {'(c) img/s':>10} | {'(b) img/s':>9} | {'a/c':>5} | {'a/b':>6} "
        f"| {'(a) per worker':>14} | {'(c) per worker':>14} | {'(e) per thread':>14}")
    for r in rows:
        n = r["workers"]
        log(f"{n:>7} | {r['ffcv_augmented_img_s']:>10,.0f} | {r['ffcv_no_aug_img_s']:>10,.0f} | "
            f"{r['torchvision_img_s']:>9,.0f} | {100 * r['augmented_vs_no_aug']:>4.0f}% | {r['ratio']:>5.1f}x "
            f"| {r['ffcv_augmented_img_s'] / n:>14,.0f} | {r['ffcv_no_aug_img_s'] / n:>14,.0f} "
            f"| {r['op_alone_img_s'] / n:>14,.0f}")
    scaling: dict[str, float] = {}
    if len(rows) > 1:
        one, many = rows[0], rows[-1]
        k = many["workers"] / one["workers"]
        for key, name in (("ffcv_augmented_img_s", "augmented"), ("ffcv_no_aug_img_s", "no_aug"),
                          ("op_alone_img_s", "op_alone")):
            scaling[name] = many[key] / (k * one[key])
        log(f"per-worker img/s at {many['workers']} workers vs 1: (a) {100 * (scaling['augmented'] - 1):+.0f}%, "
            f"(c) {100 * (scaling['no_aug'] - 1):+.0f}%, (e) {100 * (scaling['op_alone'] - 1):+.0f}%")
    torch_rows = _torch_path_rows(data_dir, batch_size, epochs, last_ffcv=rows[-1], log=log) if torch_path else []
    last = rows[-1]
    return {"benchmark": "loader", "data": what, "batch_size": batch_size, "workers": last["workers"],
            "torch_path": torch_rows,
            "ffcv_augmented_img_s": last["ffcv_augmented_img_s"], "torchvision_img_s": last["torchvision_img_s"],
            "ffcv_no_aug_img_s": last["ffcv_no_aug_img_s"], "ratio": last["ratio"],
            "augmented_vs_no_aug": last["augmented_vs_no_aug"], "by_workers": rows,
            "per_worker_scaling": scaling, "threading_layer": layer, "rounds": rounds, "epochs": epochs,
            "machine": machine()}


def _op_rates(images: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_size: int, counts: list[int],
              rounds: int) -> dict[int, float]:
    """Best-of-`rounds` img/s of `kernels.augment_batch` alone (every augmentation, normalised
    float32 output, as in (a)) over the train images in batches, at each thread count."""
    from pipeline import kernels
    from pipeline.augment_spec import kernel_params

    params = kernel_params(AugmentConfig(), normalize=True)
    mean, inv_std = mean.astype(np.float64), 1.0 / std.astype(np.float64)
    n_batches = max(1, len(images) // batch_size)
    batches = [np.ascontiguousarray(images[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
    indices = [np.arange(i * batch_size, i * batch_size + len(b), dtype=np.int64) for i, b in enumerate(batches)]
    count = sum(len(b) for b in batches)
    dst = np.empty(batches[0].shape, np.float32)
    threads = numba.get_num_threads()
    rates: dict[int, float] = {}
    try:
        for n in counts:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # set at import
            kernels.augment_batch(batches[0], dst, indices[0], 0, 0, params, mean, mean, inv_std)  # compiled
            best = 0.0
            for r in range(rounds):
                start = time.perf_counter()
                for src, idx in zip(batches, indices):
                    kernels.augment_batch(src, dst, idx, 0, r, params, mean, mean, inv_std)
                best = max(best, count / (time.perf_counter() - start))
            rates[n] = best
    finally:
        numba.set_num_threads(threads)
    return rates


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
