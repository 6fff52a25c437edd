"""What an analysis needs from a run: which checkpoint, the test images, how to normalise them.

The model sees x = (img - train_mean) / train_std in 0-255 units, NCHW float32, with the mean and
std that training recorded in config.json. Reading them from the run rather than from the data
folder keeps the analysis correct even when `--data` points at a re-prepared copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import UserError
from common.rundir import RunDir, latest_run

if TYPE_CHECKING:
    import torch

CHECKPOINTS = ("best", "last")


@dataclass
class RunInputs:
    run: RunDir
    which: str  # the checkpoint actually used ("best" falls back to "last" like RunDir.load_model)
    data_dir: Path
    classes: list[str]
    mean: np.ndarray  # (3,) float32, 0-255 scale
    std: np.ndarray  # (3,) float32, 0-255 scale
    test_subset: int | None = None  # the run was scored on the first N test images (--test-subset)

    @property
    def name(self) -> str:
        return self.run.path.name


def resolve_run(run_dir: str | Path | None, runs_root: str | Path = "runs") -> RunDir:
    """The given run, or the newest one under runs/ when none is given."""
    if run_dir is None:
        return latest_run(runs_root)
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory; pass the folder written by `python cli.py train` "
                        "(the one that holds config.json)")
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist; pass a folder written by "
                        "`python cli.py train`")
    return RunDir(path)


def open_run(run_dir: str | Path | None, which: str = "best", data_dir: str | Path | None = None,
             runs_root: str | Path = "runs") -> RunInputs:
    """Read config.json and decide checkpoint, data folder and normalisation (no torch needed)."""
    if which not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint {which!r}; choose 'best' or 'last'")
    run = resolve_run(run_dir, runs_root)
    config = run.read_config()
    data_info: dict[str, Any] = config.get("data") or {}
    if which == "best" and not run.has_checkpoint("best"):
        which = "last"  # mirrors RunDir.load_model, so predictions_{which} matches the weights

    if data_dir is None:
        data_dir = data_info.get("data_dir") or run.train_config().data.data_dir
    data_path = Path(data_dir)
    if not data_path.is_dir():
        raise UserError(f"data folder {data_path} (from {run.config_path.name}) does not exist; "
                        "pass --data with the folder written by `prepare`")

    mean, std = data_info.get("train_mean"), data_info.get("train_std")
    if mean is None or std is None:
        raise UserError(f"{run.config_path} has no train_mean/train_std; the run was not written "
                        "by this toolkit's `train`")
    mean_arr, std_arr = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean_arr.shape != (3,) or std_arr.shape != (3,) or not (std_arr > 0).all():
        raise UserError(f"{run.config_path} has an invalid train_mean/train_std (need 3 values each, "
                        "std > 0); the run directory is damaged")

    classes = data_info.get("classes")
    if not classes:
        from pipeline.cifar_source import CLASSES
        classes = list(CLASSES)
    test_subset = run.train_config().data.test_subset
    return RunInputs(run, which, data_path, [str(c) for c in classes], mean_arr, std_arr, test_subset)


def load_test_set(inputs: RunInputs) -> tuple[np.ndarray, np.ndarray]:
    """Test images (N, 32, 32, 3) uint8 and int64 labels, in the order predictions use: the first
    --test-subset images when the run was trained with one, as training scored those."""
    from pipeline.manifest import read_test_arrays

    images, labels = read_test_arrays(inputs.data_dir)
    if inputs.test_subset is not None:
        images, labels = images[:inputs.test_subset], labels[:inputs.test_subset]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise UserError(f"{inputs.data_dir}/test.npz holds images of shape {images.shape} "
                        f"({images.dtype}), not (N, 32, 32, 3) uint8; rebuild it with `prepare --force`")
    if len(labels) != len(images):
        raise UserError(f"{inputs.data_dir}/test.npz has {len(images)} images but {len(labels)} "
                        "labels; rebuild it with `prepare --force`")
    return images, labels.astype(np.int64)


def to_model_input(images: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
    """uint8 NHWC images → normalised float32 NCHW tensor, exactly as the loader feeds training."""
    import torch

    batch = images if indices is None else images[np.asarray(indices, dtype=np.int64)]
    x = (batch.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def load_model(inputs: RunInputs, averaged: bool = True):
    """The run's model in eval mode on the CPU (raises UserError for missing/mismatched weights);
    `averaged=False`: the raw weights of a run trained with --ema (models/loading.py)."""
    from models.loading import load_run_model

    return load_run_model(inputs.run, inputs.which, averaged)
