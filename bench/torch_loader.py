"""The torch data path's throughput (pipeline/torch_loader.py), to set beside `bench loader`'s
FFCV figures: img/s over whole epochs with every augmentation, without rotation (the path with
no interpolation), and with none (gather + normalise), on the CPU or a GPU, with either augment
backend ("torch": augment_torch's tensor ops; "numba": the numba kernel, CPU only).

Each figure follows one untimed warm-up epoch (allocator warm-up; torch.compile's compilation
when `compiled`). On CUDA the clock stops after a synchronize, so queued kernels are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import AugmentConfig

CONFIGS = {
    "all": AugmentConfig(),  # crop pad 4, flip 0.5, rotate ±5°, cutout 16 @ 0.5, normalise
    "no_rotate": AugmentConfig(rotate=False),
    "none": AugmentConfig.none(),
}


def _rate(loader: Any, epochs: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in loader:  # warm-up epoch
        pass
    sync()
    n = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            n += x.shape[0]
    sync()
    return n / (time.perf_counter() - start)


def _loader(source: str | Path | np.ndarray, aug: AugmentConfig, batch_size: int, device: torch.device,
            compiled: bool, backend: str) -> Any:
    from pipeline.augment_spec import AugmentSpec
    from pipeline.loaders import LoaderInfo
    from pipeline.torch_loader import TorchCifarLoader, make_torch_loader

    if not isinstance(source, np.ndarray):
        return make_torch_loader(source, "train", batch_size, aug, seed=0, device=device,
                                 compile_augment=compiled, augment_backend=backend)
    pixels = source.reshape(-1, 3).astype(np.float64)
    mean, std = pixels.mean(0).tolist(), pixels.std(0).tolist()
    info = LoaderInfo("train", len(source), mean, std, [str(i) for i in range(10)])
    return TorchCifarLoader(torch.from_numpy(source).to(device), torch.arange(len(source), device=device) % 10,
                            batch_size, AugmentSpec.from_config(aug, mean, std), 0, True, True, info, device,
                            compile_augment=compiled, backend=backend)


def bench_torch_loader(source: str | Path | np.ndarray, batch_size: int = 512, epochs: int = 2,
                       device: str | torch.device = "cpu", compiled: bool = False, backend: str = "torch",
                       configs: tuple[str, ...] = tuple(CONFIGS),
                       log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per augmentation setting. `source`: a prepared data folder (its train.npz) or
    synthetic images, (N, 32, 32, 3) uint8."""
    device = torch.device(device)
    rows = []
    for name in configs:
        loader = _loader(source, CONFIGS[name], batch_size, device, compiled, backend)
        rate = _rate(loader, epochs, device)
        rows.append({"loader": "torch", "backend": backend, "augment": name, "device": str(device),
                     "batch_size": batch_size,
                     "epochs": epochs, "images": loader.info.count, "compiled": compiled,
                     "torch_threads": torch.get_num_threads(), "img_s": rate})
        log(f"torch path ({backend} augment), {name:<9} on {device}{' (compiled)' if compiled else ''}: "
            f"{rate:>10,.0f} img/s")
    return rows
