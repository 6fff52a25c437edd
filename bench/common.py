"""Shared benchmark plumbing: data to time on, result printing and JSON."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from common.atomic import write_json
from pipeline.manifest import MANIFEST

R = TypeVar("R")


def alternated_best(measures: Sequence[Callable[[], R]], rounds: int = 2,
                    key: Callable[[R], Any] = lambda result: result) -> list[R]:
    """Each measure's best result (the highest `key`) over `rounds` rounds of all of them in turn:
    alternating keeps the host's drift from favouring whichever variant ran at a faster moment."""
    best: list[R | None] = [None] * len(measures)
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            result = measure()
            current = best[i]
            if current is None or key(result) > key(current):
                best[i] = result
    return [b for b in best if b is not None]


def machine() -> dict[str, Any]:
    import torch

    from common.allocator import in_use

    info = {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "allocator": in_use()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def data_or_synthetic(data_dir: str | Path, n_train: int = 10_000, n_test: int = 1_000,
                      log: Callable[[str], None] = print) -> tuple[Path, str]:
    """The prepared folder if it exists, else a synthetic one (random pixels) in a temp dir."""
    data_dir = Path(data_dir)
    if (data_dir / MANIFEST).is_file():
        return data_dir, f"prepared data in {data_dir}/"
    from pipeline.cifar_source import CifarData, Split
    from pipeline.prepare import write_prepared

    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)

    out = Path(tempfile.mkdtemp(prefix="cifar-bench-"))
    log(f"no prepared data in {data_dir}/; timing a synthetic set of {n_train:,} images in {out}")
    write_prepared(CifarData(split(n_train), split(n_test), "synthetic", False), out)
    return out, f"synthetic random images ({n_train:,})"


def train_images(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every train image as uint8 HWC, in beton order: the baselines get exactly these pixels."""
    import torch

    from common.config import AugmentConfig
    from pipeline.ffcv_loader import make_loader

    loader = make_loader(data_dir, "train", 1000, aug=AugmentConfig.none(), shuffle=False, drop_last=False)
    mean = torch.tensor(loader.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(loader.info.std).view(1, 3, 1, 1)
    images, labels = [], []
    for x, y in loader:
        images.append((x * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def report(results: dict[str, Any], json_path: str | Path | None, log: Callable[[str], None] = print) -> None:
    if json_path is not None:
        write_json(json_path, results)
        log(f"wrote {json_path}")
