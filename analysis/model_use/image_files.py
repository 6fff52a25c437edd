"""Reading users' image files into the 32×32 RGB uint8 arrays the model was trained on.

The rule, stated once here and repeated in `predict --help`:

  * formats: PNG, JPEG, BMP and WebP (checked from the file's content, not its extension); the
    first frame of an animated file; a JPEG's EXIF orientation is applied, as image viewers do.
    Any other image (GIF, TIFF, HEIC, …) is refused with the same line whether it is named or
    found in a folder; inside folders, files that are not images by extension are left out.
  * colour: greyscale, palette, CMYK and 1-bit images are converted to RGB; 16-bit greyscale is
    scaled to 8 bits (value >> 8); an alpha channel (RGBA, LA, a palette with transparency) is
    composited onto a white background, so transparent areas read as white, the way a viewer shows
    them, rather than as whatever colour the invisible pixels happen to hold.
  * geometry: a centred square crop (side = the shorter side; the extra pixels are split evenly,
    the odd one going to the right/bottom), resized to 32×32 with Pillow's antialiased BICUBIC
    filter and reducing_gap=3 (a box pre-reduction by an integer factor that keeps at least 3×
    the target size, then bicubic). Images already 32×32 pass through untouched, so a CIFAR-10
    test image saved as PNG gives exactly the pixels `evaluate` uses. Large JPEGs are decoded at a
    reduced DCT scale (Pillow's draft mode) that still keeps at least 96 px on the shorter side:
    faster, and the 32×32 result is within a grey level of a full decode (docs/BENCHMARKS.md,
    'Moved from code comments'). The crop edge then falls on the reduced grid, at most half a reduced
    pixel (a few source pixels) from where a full decode puts it.

Why a centre crop rather than squashing the whole picture into a square: CIFAR-10 objects are
roughly centred and never distorted; changing the aspect ratio would show the model shapes it never
saw. The price is that an object near the edge of a wide photo may be cut off; crop it yourself
first in that case.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".webp")
# Images in formats this toolkit does not read. Inside a folder they are tried like the supported
# ones, so each gets the same "skipped …: is a GIF file; supported formats are …" line as when it
# is named; only files that are not images at all (a README, .DS_Store) are ignored silently.
OTHER_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".tga",
                          ".ppm", ".pgm", ".pbm", ".pnm", ".psd", ".svg")
BACKGROUND = (255, 255, 255)  # alpha is composited onto white
REDUCING_GAP = 3.0
DRAFT_MIN = 3 * SIZE  # JPEG draft decoding keeps at least this many pixels on the shorter side

RULE = ("centre square crop (side = the shorter side), then Pillow BICUBIC (antialiased, "
        "reducing_gap=3) to 32×32; alpha composited onto white; greyscale/palette/CMYK → RGB")


class ImageReadError(Exception):
    """One file could not be used; the message names the reason (the caller adds the file name)."""


@dataclass
class ImageInfo:
    path: Path
    size: tuple[int, int]  # original (width, height)
    mode: str  # Pillow mode as stored in the file (RGB, RGBA, L, P, ...)
    format: str  # PNG, JPEG, BMP, WEBP


@dataclass
class Collected:
    """What the PATH arguments expanded to: image files to read, and arguments that named nothing."""

    files: list[Path]
    missing: list[str]  # arguments that are neither a file, a folder nor a glob with matches
    ignored: int  # files inside given folders skipped because they are not images (by extension)


def collect_images(specs: Sequence[str | os.PathLike]) -> Collected:
    """Expand files, folders (recursive; image extensions only, sorted) and globs, in argument order.

    A file named explicitly is always tried, whatever its extension, so a mislabelled image is
    still read and a non-image gets its own error line; inside a folder only image extensions are
    taken (the supported ones and OTHER_IMAGE_EXTENSIONS, which are then refused by name just as
    when named), so a README or a .DS_Store next to the pictures is not reported as a failure.
    Symlinked folders are not descended into, in folders and in `**` globs alike, so a link loop
    cannot hang the command. Each file appears once even when several arguments reach it.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    missing: list[str] = []
    ignored = 0

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    def take(path: Path) -> bool:
        """Add a file, or a folder's images; False when the path is neither."""
        nonlocal ignored
        if path.is_file():
            add(path)
        elif path.is_dir():
            found, skipped = _walk(path)
            ignored += skipped
            for p in found:
                add(p)
        else:
            return False
        return True

    for spec in specs:
        text = os.fspath(spec)
        if take(Path(text)):
            continue
        if glob.has_magic(text):
            matches = sorted(expand_glob(text))
            if not matches:
                missing.append(text)
            for match in matches:
                take(Path(match))
        else:
            missing.append(text)
    return Collected(files, missing, ignored)


def _walk(folder: Path) -> tuple[list[Path], int]:
    found, skipped = [], 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            if name.lower().endswith(EXTENSIONS + OTHER_IMAGE_EXTENSIONS):
                found.append(Path(root) / name)
            else:
                skipped += 1
    return found, skipped


def expand_glob(pattern: str) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, except that `**` never enters a symlinked folder.

    glob follows every symlink under `**`, so a link back to a parent folder (`L/loop -> ..`)
    made it recurse until the path grew too long: with two such links 2^40 paths, a hang. The same
    rule as folder mode (os.walk without followlinks) applies instead: `**` matches the folder,
    the real folders below it and (as the last part) their files; a wildcard or literal part may
    still name a symlinked folder, one level, never recursively. Hidden names match only a part
    that starts with a dot, as in glob.
    """
    absolute, dirs_only = pattern.startswith(os.sep), pattern.endswith(os.sep)
    parts = [p for p in pattern.split(os.sep) if p]
    current = [os.sep if absolute else ""]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        following: list[str] = []
        for base in current:
            if part == "**":
                following.extend(_below(base, with_files=last))
            elif glob.has_magic(part):
                following.extend(_matching(base, part, dirs_only=not last))
            else:
                candidate = os.path.join(base, part)
                if os.path.isdir(candidate) or (last and os.path.lexists(candidate)):
                    following.append(candidate)
        current = following
    return [c for c in dict.fromkeys(current) if c and (not dirs_only or os.path.isdir(c))]


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder or os.curdir) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _matching(base: str, part: str, dirs_only: bool) -> list[str]:
    out = []
    for entry in _entries(base):
        if entry.name.startswith(".") and not part.startswith("."):
            continue
        if fnmatch.fnmatch(entry.name, part) and (not dirs_only or entry.is_dir()):
            out.append(os.path.join(base, entry.name))
    return out


def _below(base: str, with_files: bool) -> list[str]:
    """`base` and every real (not symlinked) folder below it, not hidden; with_files: their files too."""
    out = [base]
    stack = [base]
    while stack:
        folder = stack.pop()
        for entry in _entries(folder):
            if entry.name.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            if entry.is_dir(follow_symlinks=False):
                out.append(path)
                stack.append(path)
            elif with_files and not entry.is_dir():
                out.append(path)
    return out


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """(32, 32, 3) uint8 RGB following the module's rule, and what the file held.

    Raises ImageReadError with a short reason for anything Pillow cannot decode or that is not one
    of the four supported formats (a GIF, a TIFF, a text file renamed .png, a truncated file).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.format not in FORMATS:
                raise ImageReadError(f"is a {img.format or 'unknown'} file; supported formats are PNG, JPEG, BMP "
                                     "and WebP")
            info = ImageInfo(path, img.size, img.mode, img.format)
            if img.format == "JPEG" and min(img.size) > 2 * DRAFT_MIN:
                img.draft(None, (DRAFT_MIN, DRAFT_MIN))
            img.load()
            oriented = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
            rgb = to_rgb(oriented)
            return square_resize(rgb), info
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("is not an image Pillow can read (PNG, JPEG, BMP or WebP expected)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"is too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError; a folder or an unreadable
        # file as OSError.
        if isinstance(exc, OSError) and exc.errno is not None:
            raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
        raise ImageReadError(f"cannot be decoded ({str(exc) or type(exc).__name__})") from None


def to_rgb(img):
    """Any Pillow mode → RGB, alpha composited onto white, 16-bit greyscale scaled to 8 bits."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img)
        if arr.dtype.kind == "f":
            grey = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            grey = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or \
        (img.mode == "P" and "transparency" in img.info) or \
        (img.mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def square_resize(img) -> np.ndarray:
    """Centred square crop, then BICUBIC (antialiased, reducing_gap=3) to 32×32, as uint8 HWC."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (SIZE, SIZE):
        return np.asarray(img, dtype=np.uint8).copy()
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # Crop first, then resize: resize(box=...) would let the filter reach past the box and blend
    # the cropped-away bands into the edge pixels (measured: a green band showed in column 0).
    square = img.crop((left, top, left + side, top + side))
    out = square.resize((SIZE, SIZE), Image.Resampling.BICUBIC,
                        reducing_gap=REDUCING_GAP if side >= REDUCING_GAP * SIZE else None)
    return np.asarray(out, dtype=np.uint8).copy()


def readable_crop(path: Path, side: int) -> np.ndarray:
    """The same centre crop at `side`×`side` for display (CAM figures), not what the model sees."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        oriented = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
        rgb = to_rgb(oriented)
    w, h = rgb.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    # Small images are enlarged with nearest neighbour so their pixels stay crisp, like the gallery.
    resample = Image.Resampling.NEAREST if s < side else Image.Resampling.BICUBIC
    return np.asarray(rgb.crop((left, top, left + s, top + s)).resize((side, side), resample), dtype=np.uint8)


def read_many(paths: Iterable[Path], threads: int | None = None) -> list[tuple[np.ndarray | None, ImageInfo | str]]:
    """read_image over many files, in order; a failure becomes its reason string instead of raising.

    Pillow releases the GIL while decoding, so a few threads overlap the decoding of large files;
    for 32×32 PNGs the pool costs about as much as it saves, which is why it is only a thread pool.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(p: Path) -> tuple[np.ndarray | None, ImageInfo | str]:
        try:
            return read_image(p)
        except ImageReadError as exc:
            return None, str(exc)

    paths = list(paths)
    workers = threads if threads is not None else min(4, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 8:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))
