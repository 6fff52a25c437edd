"""`manifest.json`: what `prepare` wrote, and the facts the loaders and runs depend on.

The loaders normalise with the train mean/std recorded here, and every run copies the data's
sha256 (`split_digests`: the arrays') into its config, so a run can tell when the data under it has
changed, and can move to another prepare of the same source.

Two copies of each split may exist: FFCV betons (`train.beton`, `test.beton`; written only where
FFCV imports, listed under "betons") and plain numpy arrays (`train.npz`, `test.npz`; always
written, under each split's "arrays"), which the torch loader and the analysis read without FFCV.
A manifest from before the arrays existed (no "betons" key) has both betons and only test.npz.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError

MANIFEST = "manifest.json"
TEST_ARRAYS = "test.npz"  # test images (N, 32, 32, 3) uint8 + labels, for analysis
TRAIN_ARRAYS = "train.npz"  # the same for the train split, for the torch loader
SPLITS = ("train", "test")
ARRAYS = {"train": TRAIN_ARRAYS, "test": TEST_ARRAYS}
FORMAT_VERSION = 1


def beton_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.beton"


def arrays_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / ARRAYS[split]


def recorded_betons(manifest: dict[str, Any]) -> list[str]:
    """Splits whose beton prepare wrote (all of them for manifests older than the "betons" key)."""
    betons = manifest.get("betons", list(SPLITS))
    return [s for s in SPLITS if isinstance(betons, list) and s in betons]


def has_betons(manifest: dict[str, Any]) -> bool:
    return recorded_betons(manifest) == list(SPLITS)


def split_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """The sha256 a run records per split: what identifies the data, the arrays' (train.npz,
    test.npz: byte-identical whenever the same source is prepared again, with or without FFCV),
    not the betons' (FFCV's writer lays pages out in whatever order its workers finish, so two
    prepares of one archive differ in bytes). Manifests from before train.npz existed: the betons'."""
    if all("arrays" in manifest["splits"][s] for s in SPLITS):
        return {s: manifest["splits"][s]["arrays"]["sha256"] for s in SPLITS}
    return beton_digests(manifest)


def beton_digests(manifest: dict[str, Any]) -> dict[str, str]:
    return {s: manifest["splits"][s]["sha256"] for s in SPLITS}


def same_data(recorded: dict[str, str] | None, manifest: dict[str, Any]) -> bool:
    """A run's recorded digests name this folder's data: its arrays', or (runs recorded before
    the arrays identified the data) its betons'."""
    if recorded == split_digests(manifest):
        return True
    return has_betons(manifest) and recorded == beton_digests(manifest)


@functools.lru_cache(maxsize=1)
def ffcv_missing() -> str | None:
    """None when FFCV imports, else why not (one clause). Importing it costs seconds, once.
    Lives here, beside `has_betons`, so callers that only ask need neither numba nor torch."""
    try:
        import ffcv  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: a shared library it links is missing
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
    return None


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
        _ = manifest["splits"]["train"]["count"], manifest["splits"]["test"]["count"]
        _ = manifest["train_mean"], manifest["train_std"]
        _ = split_digests(manifest)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a valid manifest; run `python cli.py prepare --out "
                        f"{data_dir} --force` to rebuild the data") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{data_dir}/ was prepared by another version of this toolkit (data format "
                        f"{manifest.get('format_version')!r}, this version reads {FORMAT_VERSION}); rebuild it "
                        f"with `python cli.py prepare --out {data_dir} --force`")
    for split in recorded_betons(manifest):
        if not beton_path(data_dir, split).is_file():
            raise UserError(f"{beton_path(data_dir, split)} is missing; run `python cli.py prepare "
                            f"--out {data_dir} --force` to rebuild the data")
    return manifest


def verify_betons(data_dir: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Return the splits whose beton no longer matches the manifest (size, then sha256); a
    manifest that records no betons (prepared without FFCV) has none to check."""
    bad = []
    for split in recorded_betons(manifest):
        path = beton_path(data_dir, split)
        info = manifest["splits"][split]
        if not path.is_file() or path.stat().st_size != info.get("bytes") or sha256_file(path) != info["sha256"]:
            bad.append(split)
    return bad


def verify_arrays(data_dir: str | Path, manifest: dict[str, Any],
                  splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Return the splits whose .npz is missing, unrecorded, or differs from the manifest (size,
    then sha256 of the whole file)."""
    bad = []
    for split in splits:
        path = arrays_path(data_dir, split)
        info = manifest["splits"][split].get("arrays")
        if not isinstance(info, dict) or not path.is_file() or path.stat().st_size != info.get("bytes") \
                or sha256_file(path) != info.get("sha256"):
            bad.append(split)
    return bad


# What numpy raises for an .npz that is truncated or corrupt: zipfile's BadZipFile (no central
# directory, a bad CRC), EOFError / ValueError (a member cut short, a damaged .npy header), OSError,
# KeyError (a member missing). A zlib.error cannot happen: prepare writes the arrays uncompressed.
NPZ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError)


def _load_npz(path: Path, rebuild: str) -> tuple[np.ndarray, np.ndarray]:
    """images and labels of one .npz, read whole; a damaged file is one sentence with the fix."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"]
    except NPZ_ERRORS as exc:
        detail = " ".join(str(exc).split())[:100] or type(exc).__name__
        raise UserError(f"{path} is truncated or corrupt ({type(exc).__name__}: {detail}); {rebuild}") from None


def read_arrays(data_dir: str | Path, split: str, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N, 32, 32, 3) uint8 and int64 labels, checked against the manifest."""
    path = arrays_path(data_dir, split)
    rebuild = f"rebuild it with `python cli.py prepare --out {data_dir} --force`"
    if not isinstance(manifest["splits"][split].get("arrays"), dict):
        raise UserError(f"{data_dir}/ was prepared before {ARRAYS[split]} existed (the torch loader reads it); "
                        f"{rebuild}")
    if verify_arrays(data_dir, manifest, (split,)):
        what = "missing" if not path.is_file() else "not the file prepare wrote (size or sha256 differs)"
        raise UserError(f"{path} is {what}; {rebuild}")
    images, labels = _load_npz(path, rebuild)
    count = manifest["splits"][split]["count"]
    if images.dtype != np.uint8 or images.shape != (count, 32, 32, 3) or labels.shape != (count,):
        raise UserError(f"{path} holds images {images.shape} {images.dtype} and {labels.shape[0]} labels, "
                        f"not the {count} 32x32x3 uint8 images the manifest records; {rebuild}")
    return images, labels.astype(np.int64)


def read_test_arrays(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Test images (N, 32, 32, 3) uint8 and labels, in beton order, without FFCV."""
    path = Path(data_dir) / TEST_ARRAYS
    if not path.is_file():
        raise UserError(f"{path} is missing; run `python cli.py prepare --out {data_dir} --force` "
                        "to rebuild the data")
    return _load_npz(path, f"rebuild it with `python cli.py prepare --out {data_dir} --force`")
