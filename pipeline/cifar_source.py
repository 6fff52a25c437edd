"""Read and validate CIFAR-10 in the official python-pickle layout.

Sources: the official `cifar-10-python.tar.gz` (downloaded or local), any `.tar.gz` with the same
layout, or an extracted `cifar-10-batches-py/` folder. The batches are pickles, so they are read
with an unpickler that only admits the numpy classes the format needs: a crafted archive cannot
run code on the user's machine.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_path
from common.errors import UserError
from pipeline.manifest import file_digest

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
# md5 of each member of the official release, so a re-packed archive or an extracted folder
# can still be recognised as the official data.
MEMBER_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
N_TRAIN, N_TEST = 50_000, 10_000


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64


SOURCE_KIND = "cifar10-python"


@dataclass
class CifarData:
    """Validated train/test arrays from any source `prepare` reads (the name predates the image
    folder source, which fills the same fields)."""

    train: Split
    test: Split
    source: str
    official: bool
    kind: str = SOURCE_KIND  # "cifar10-python" or "image-folder" (pipeline.image_folder.SOURCE_KIND)
    classes: tuple[str, ...] = CLASSES  # label i is classes[i]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_batch(raw: bytes, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any malformed pickle is the user's file, not our bug
        raise UserError(f"{source}: {name} is not a readable CIFAR-10 batch ({exc}); "
                        "re-download the archive") from None
    if not isinstance(batch, dict):
        raise UserError(f"{source}: {name} does not hold a CIFAR-10 batch dict; is this CIFAR-10?")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "fine_labels" in batch or "coarse_labels" in batch:
        raise UserError(f"{source} looks like CIFAR-100 (it has fine/coarse labels); "
                        "this toolkit needs the CIFAR-10 python archive")
    if "data" not in batch or "labels" not in batch:
        raise UserError(f"{source}: {name} lacks the 'data'/'labels' keys of a CIFAR-10 batch "
                        f"(found {sorted(batch)}); is this the python version of CIFAR-10?")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{source}: {name} holds images of shape {data.shape} and type {data.dtype}; "
                        "CIFAR-10 images are 3072 uint8 values (32x32x3)")
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{source}: {name} has {len(data)} images but {labels.size} labels")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{source}: {name} has labels outside 0-9 "
                        f"(min {labels.min()}, max {labels.max()}); this is not CIFAR-10")
    # Stored CHW row-major per image; FFCV wants HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _read_members_from_tar(path: Path) -> dict[str, bytes]:
    wanted = set(TRAIN_BATCHES) | {TEST_BATCH}
    found: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                names.append(member.name)
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and member.name.startswith(f"{FOLDER}/"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    found[base] = fh.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{path} is not a readable .tar.gz archive ({_why_unreadable(path, exc)}); it may be "
                        "truncated or corrupt: download it again") from None
    if not found and any(n.startswith("cifar-100-python") for n in names):
        raise UserError(f"{path} is the CIFAR-100 archive; this toolkit needs CIFAR-10 "
                        "(cifar-10-python.tar.gz)")
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} under {FOLDER}/; expected the official "
                        "CIFAR-10 python layout")
    return found


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """What is wrong with an archive tarfile could not read, as one whole clause. tarfile's own
    message lists every method it tried over several lines, and cutting it left half a sentence."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as err:
        return f"it cannot be opened: {err.strerror or err}"
    if not head:
        return "the file is empty"
    compressed = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}
    kind = next((name for magic, name in compressed.items() if head.startswith(magic)), None)
    if kind is None:
        return "it is neither gzip, bzip2 nor xz data, nor a plain tar file"
    if isinstance(exc, (EOFError, zlib.error)) or "end of data" in str(exc) or "ended before" in str(exc):
        return f"its {kind} data ends early or is damaged"
    return f"it is {kind}-compressed, but what it holds is not a tar archive"


def _read_members_from_folder(path: Path) -> dict[str, bytes]:
    folder = path / FOLDER if (path / FOLDER).is_dir() else path
    if (folder / "train").is_file() and (folder / "meta").is_file():
        raise UserError(f"{path} looks like CIFAR-100 (train/test/meta files); "
                        "this toolkit needs CIFAR-10")
    found = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        f = folder / name
        if not f.is_file():
            raise UserError(f"{folder} lacks {name}; expected an extracted {FOLDER}/ folder "
                            "with data_batch_1..5 and test_batch")
        found[name] = f.read_bytes()
    return found


def read_cifar10(source: str | Path, check_counts: bool = True) -> CifarData:
    """Read a local archive or folder; raise UserError for anything that is not CIFAR-10."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"source {path} does not exist; pass an existing .tar.gz or "
                        f"{FOLDER}/ folder, or omit --source to download")
    raw = _read_members_from_folder(path) if path.is_dir() else _read_members_from_tar(path)
    official = all(hashlib.md5(raw[n]).hexdigest() == MEMBER_MD5[n] for n in raw)

    parts = [_load_batch(raw[name], name, str(path)) for name in TRAIN_BATCHES]
    train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = Split(*_load_batch(raw[TEST_BATCH], TEST_BATCH, str(path)))
    if check_counts:
        for split, want, name in ((train, N_TRAIN, "train"), (test, N_TEST, "test")):
            if len(split.labels) != want:
                raise UserError(f"{path} has {len(split.labels)} {name} images; CIFAR-10 has {want}")
    for split, name in ((train, "train"), (test, "test")):
        missing = sorted(set(range(10)) - set(np.unique(split.labels).tolist()))
        if missing:
            raise UserError(f"{path}: the {name} split has no images of class "
                            f"{', '.join(CLASSES[m] for m in missing)}; this is not complete CIFAR-10")
    return CifarData(train=train, test=test, source=str(path.resolve()), official=official)


def download(dest_dir: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch the official archive into dest_dir (atomically) and verify its md5."""
    target = dest_dir / "cifar-10-python.tar.gz"
    if target.is_file() and file_digest(target, "md5") == ARCHIVE_MD5:
        return target
    try:
        with urllib.request.urlopen(URL, timeout=30) as resp, atomic_path(target) as tmp:
            total = int(resp.headers.get("Content-Length") or 0)
            digest = hashlib.md5()
            done = 0
            with open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            if digest.hexdigest() != ARCHIVE_MD5:
                raise UserError(f"the download from {URL} has md5 {digest.hexdigest()}, not the "
                                f"official {ARCHIVE_MD5}; try again or pass --source")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise UserError(f"could not download CIFAR-10 from {URL} ({exc}); download it by hand and "
                        "pass --source PATH") from None
    return target

