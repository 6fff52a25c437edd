"""Read an image folder in the usual class-subfolder layout as a 32×32 train/test dataset.

Layout: root/train/<class>/*.png|jpg|jpeg|bmp|webp and root/test/<class>/... (extensions in any
case; hidden files and other files are ignored). Class names are the folder names, sorted, and
label i is the i-th name; every class must be in both splits with at least one image each.

Each image is converted to RGB (alpha dropped, greyscale and palette expanded), centre-cropped to
a square on its shorter side, and resized to 32×32 with Pillow's BICUBIC filter, which Pillow
widens by the scale factor on downscaling (so it averages over the source pixels, rather than
aliasing as point-sampled bicubic would). A 32×32 RGB image is kept bit for bit.

Images are ordered round-robin over the classes (first image of each class, then the second, …),
so `--limit N` and the trainer's `--subset` / `--test-subset` (first N) keep the classes balanced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import UserError
from pipeline.cifar_source import CifarData, Split

SOURCE_KIND = "image-folder"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_DIRS = ("train", "test")
SIZE = 32
METHOD = "RGB, centre crop to square, Pillow BICUBIC resize to 32x32"


def is_image_folder(path: str | Path) -> bool:
    """True for a folder with a train/ or test/ subfolder: meant as an image folder (the CIFAR
    layouts have neither; CIFAR-100's has *files* of those names), so a missing one is reported
    as such rather than as a missing CIFAR batch."""
    root = Path(path).expanduser()
    return root.is_dir() and any((root / s).is_dir() for s in SPLIT_DIRS)


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c: sorted(p for p in (split_dir / c).iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS)
            for c in classes}


def load_image(path: Path) -> np.ndarray:
    """One file → (32, 32, 3) uint8, or UserError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")  # decodes the whole file: truncated data fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise UserError(f"{path} is not a readable image ({type(exc).__name__}: {detail}); "
                        "remove or replace it and run prepare again") from None
    w, h = rgb.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if side != SIZE:
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def read_image_folder(source: str | Path, limit: int | None = None) -> CifarData:
    """Validate the layout, then decode (with `limit`, only the first `limit` images of each
    split in round-robin order are opened, so an unreadable file beyond them is not noticed)."""
    root = Path(source).expanduser()
    missing = [s for s in SPLIT_DIRS if not (root / s).is_dir()]
    if missing:
        raise UserError(f"{root} lacks {missing[0]}/; an image folder needs train/ and test/ subfolders "
                        "with one folder per class inside each")
    files = {s: _class_files(root / s) for s in SPLIT_DIRS}
    if not files["train"]:
        raise UserError(f"{root}/train has no class folders; put each class's images in train/<class>/")
    only = {s: sorted(set(files[s]) - set(files[o])) for s, o in (("train", "test"), ("test", "train"))}
    for split, other in (("train", "test"), ("test", "train")):
        if only[split]:
            raise UserError(f"{root}: class folder(s) {', '.join(only[split])} are in {split}/ but not in "
                            f"{other}/; every class needs images in both splits")
    classes = sorted(files["train"])
    if len(classes) < 2:
        raise UserError(f"{root} has only the class {classes[0]!r}; a classifier needs at least two class folders")
    for split in SPLIT_DIRS:
        empty = [c for c in classes if not files[split][c]]
        if empty:
            raise UserError(f"{root}/{split}/{empty[0]} holds no images ({', '.join(EXTENSIONS)}); every "
                            "class needs at least one image in each split")
    splits = []
    for split in SPLIT_DIRS:
        order = _round_robin([files[split][c] for c in classes])
        if limit is not None:
            order = order[:limit]
        images = np.empty((len(order), SIZE, SIZE, 3), dtype=np.uint8)
        for i, (_, path) in enumerate(order):
            images[i] = load_image(path)
        splits.append(Split(images, np.array([label for label, _ in order], dtype=np.int64)))
    return CifarData(splits[0], splits[1], str(root.resolve()), False, SOURCE_KIND, tuple(classes))


def _round_robin(per_class: list[list[Path]]) -> list[tuple[int, Path]]:
    out: list[tuple[int, Path]] = []
    for k in range(max(len(f) for f in per_class)):
        out.extend((label, f[k]) for label, f in enumerate(per_class) if k < len(f))
    return out
