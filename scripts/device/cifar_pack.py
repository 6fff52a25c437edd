"""Lossless CIFAR-10 batches in half their size, for a GPU machine that takes a 64 MiB upload.

Usage: python scripts/device/cifar_pack.py pack   SRC_DIR OUT_DIR NAME[,NAME...]
       python scripts/device/cifar_pack.py unpack PART_DIR DEST_DIR

`pack` reads batches of the official python layout (`cifar-10-batches-py/data_batch_1`, …) and
writes NAME.xz (pixels) + NAME.json (count, labels, batch label, sha256 of the pixels) per batch;
`unpack` writes the same pickles back and refuses a batch whose pixels do not hash as packed, so
`python cli.py prepare` on the result writes the arrays a local prepare writes. Files named
*.raw in a part (batches.meta.raw, …) are copied back without the suffix.

The coding is image compression's oldest lossless pair: green subtracted from red and blue (the
colour channels move together), then each pixel replaced by its error against the median edge
detector of JPEG-LS (LOCO-I), which predicts from the left, upper and upper-left pixels; xz packs
the small errors. Only numpy and the standard library, so it runs under the device's own Python.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import pickle
import sys
from pathlib import Path

import numpy as np

SIDE = 32


def _predict(left: np.ndarray, up: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: min/max of left and up at an edge, else the plane through them."""
    low, high = np.minimum(left, up), np.maximum(left, up)
    return np.where(corner >= high, low, np.where(corner <= low, high, left + up - corner))


def _decorrelate(x: np.ndarray, sign: int) -> np.ndarray:
    """(n, 3, 32, 32) uint8: red and blue minus (sign -1: plus) green, modulo 256; green kept."""
    green = x[:, 1:2].astype(np.int16)
    out = x.astype(np.int16)
    out[:, 0:1] = (out[:, 0:1] - sign * green) % 256
    out[:, 2:3] = (out[:, 2:3] - sign * green) % 256
    return out.astype(np.uint8)


def encode(images: np.ndarray) -> bytes:
    """(n, 3, 32, 32) uint8 → xz bytes of the prediction errors, channel-major."""
    p = _decorrelate(images, 1).astype(np.int16)
    left, up, corner = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    left[..., :, 1:], up[..., 1:, :], corner[..., 1:, 1:] = p[..., :, :-1], p[..., :-1, :], p[..., :-1, :-1]
    errors = ((p - _predict(left, up, corner)) % 256).astype(np.uint8)
    return lzma.compress(errors.transpose(1, 0, 2, 3).tobytes(), preset=9 | lzma.PRESET_EXTREME)


def decode(blob: bytes, n: int) -> np.ndarray:
    """encode's inverse: pixels rebuilt in raster order (each prediction needs its decoded neighbours)."""
    errors = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(3, n, SIDE, SIDE).transpose(1, 0, 2, 3)
    p = np.zeros((n, 3, SIDE + 1, SIDE + 1), np.int16)  # row 0 and column 0: the zero border encode assumed
    for i in range(SIDE):
        for j in range(SIDE):
            guess = _predict(p[:, :, i + 1, j], p[:, :, i, j + 1], p[:, :, i, j])
            p[:, :, i + 1, j + 1] = (errors[:, :, i, j] + guess) % 256
    return _decorrelate(p[:, :, 1:, 1:].astype(np.uint8), -1)


def _sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def pack(src: Path, out: Path, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(src / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        flat = np.asarray(batch[b"data"], np.uint8)
        blob = encode(flat.reshape(-1, 3, SIDE, SIDE))
        meta = {"n": len(flat), "labels": [int(v) for v in batch[b"labels"]],
                "batch_label": batch.get(b"batch_label", b"").decode("latin-1"), "sha256": _sha256(flat)}
        (out / f"{name}.xz").write_bytes(blob)
        (out / f"{name}.json").write_text(json.dumps(meta))
        print(f"{name}: {len(blob) / flat.nbytes:.3f} of {flat.nbytes:,} bytes", flush=True)


def unpack(part: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for meta_path in sorted(part.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        flat = decode((part / f"{meta_path.stem}.xz").read_bytes(), meta["n"]).reshape(meta["n"], -1)
        if _sha256(flat) != meta["sha256"]:
            sys.exit(f"error: {meta_path.stem} does not decode to the pixels that were packed")
        batch = {b"batch_label": meta["batch_label"].encode("latin-1"), b"labels": meta["labels"], b"data": flat}
        (dest / meta_path.stem).write_bytes(pickle.dumps(batch))
        print(f"unpacked {meta_path.stem}", flush=True)
    for raw in part.glob("*.raw"):
        (dest / raw.stem).write_bytes(raw.read_bytes())


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "pack":
        pack(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","))
    elif len(sys.argv) == 4 and sys.argv[1] == "unpack":
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__.split("\n\n")[1])
