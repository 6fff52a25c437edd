"""`manifest.json`: what `prepare` wrote, and the facts the loader and runs depend on.

The loader normalises with the train mean/std recorded here, and every run copies the betons'
sha256 into its config, so a run can tell when the data under it has changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError

MANIFEST = "manifest.json"
TEST_ARRAYS = "test.npz"  # test images (N, 32, 32, 3) uint8 + labels, for analysis
SPLITS = ("train", "test")
FORMAT_VERSION = 1


def beton_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.beton"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Load and sanity-check the manifest; point at `prepare` when it is missing."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        missing = [s for s in SPLITS if not beton_path(data_dir, s).is_file()]
        what = f"{', '.join(m + '.beton' for m in missing)} and {MANIFEST}" if missing else MANIFEST
        raise UserError(f"no prepared data in {data_dir}/ ({what} missing); run "
                        f"`python cli.py prepare --out {data_dir}` first")
    try:
        manifest = json.loads(path.read_text())
        _ = manifest["splits"]["train"]["sha256"], manifest["train_mean"], manifest["train_std"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a valid manifest; run `python cli.py prepare --out "
                        f"{data_dir} --force` to rebuild the data") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{data_dir}/ was prepared by another version of this toolkit (data format "
                        f"{manifest.get('format_version')!r}, this version reads {FORMAT_VERSION}); rebuild it "
                        f"with `python cli.py prepare --out {data_dir} --force`")
    for split in SPLITS:
        if not beton_path(data_dir, split).is_file():
            raise UserError(f"{beton_path(data_dir, split)} is missing; run `python cli.py prepare "
                            f"--out {data_dir} --force` to rebuild the data")
    return manifest


def verify_betons(data_dir: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Return the splits whose beton no longer matches the manifest (size, then sha256)."""
    bad = []
    for split in SPLITS:
        path = beton_path(data_dir, split)
        info = manifest["splits"][split]
        if not path.is_file() or path.stat().st_size != info.get("bytes") or sha256_file(path) != info["sha256"]:
            bad.append(split)
    return bad


def read_test_arrays(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Test images (N, 32, 32, 3) uint8 and labels, in beton order, without FFCV."""
    path = Path(data_dir) / TEST_ARRAYS
    if not path.is_file():
        raise UserError(f"{path} is missing; run `python cli.py prepare --out {data_dir} --force` "
                        "to rebuild the data")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"]
    except (ValueError, KeyError, OSError):
        raise UserError(f"{path} is damaged; run `python cli.py prepare --out {data_dir} --force`") from None
