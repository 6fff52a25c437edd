"""Synthetic CIFAR-10 in the official python-pickle layout, for fast tests.

Batches are written exactly like the official ones: a pickle (protocol 2) of a dict with bytes
keys b'batch_label', b'labels' (list of int), b'data' (uint8 N×3072, CHW row-major),
b'filenames'; plus batches.meta. Images encode their label and index so pairing and order can be
checked after any shuffle: pixel [0, 0, 0] = label * 25, [0, 1, 0] = index % 256,
[0, 2, 0] = index // 256.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]


def make_split(n: int, seed: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 HWC images and int64 labels; every class present when n >= 10."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    idx = np.arange(n) + offset
    images[:, 0, 0, 0] = labels * 25
    images[:, 0, 1, 0] = idx % 256
    images[:, 0, 2, 0] = idx // 256
    return images, labels.astype(np.int64)


def _batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=2)


def make_members(n_train: int = 500, n_test: int = 100, seed: int = 0,
                 train: tuple[np.ndarray, np.ndarray] | None = None,
                 test: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, bytes]:
    """Pickled members keyed by file name; n_train is split over the five train batches."""
    train = train if train is not None else make_split(n_train, seed)
    test = test if test is not None else make_split(n_test, seed + 1)
    members: dict[str, bytes] = {}
    chunks = np.array_split(np.arange(len(train[1])), 5)
    for name, idx in zip(TRAIN_NAMES, chunks):
        members[name] = _batch_bytes(train[0][idx], train[1][idx], name)
    members["test_batch"] = _batch_bytes(test[0], test[1], "test_batch")
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                  "dog", "frog", "horse", "ship", "truck")],
            b"num_cases_per_batch": len(chunks[0]), b"num_vis": 3072}
    members["batches.meta"] = pickle.dumps(meta, protocol=2)
    return members


def write_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_folder(root: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for name, raw in members.items():
        (out / name).write_bytes(raw)
    return out
