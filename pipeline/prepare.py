"""`prepare`: source → validated arrays → train/test .beton + .npz + manifest.json.

Sources: CIFAR-10 in the python-pickle layout (pipeline/cifar_source.py) or an image folder with
train/<class>/ and test/<class>/ (pipeline/image_folder.py). The betons are written only where
FFCV imports; the .npz arrays (what the torch loader and the analysis read) always are, so data can
be prepared, and trained on with `--loader torch`, without FFCV.

FFCV's writer forks one process per core (timings: docs/BENCHMARKS.md, 'prepare'). Each file is
written to a temp file and renamed, so an interrupted prepare never leaves a file under its final
name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from common.atomic import atomic_group
from common.errors import UserError
from common.lock import READERS_NAME, FolderLock, rewriting_data
from pipeline import cifar_source, image_folder
from pipeline.cifar_source import CifarData, Split
from pipeline.manifest import (
    ARRAYS,
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    TEST_ARRAYS,
    arrays_path,
    beton_path,
    ffcv_missing,
    has_betons,
    read_manifest,
    sha256_file,
    verify_arrays,
    verify_betons,
)


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict[str, Any]
    skipped: bool  # valid outputs were already there
    seconds: float


class _ArrayDataset:
    """Indexable (image, label) view that FFCV's writer forks into its workers."""

    def __init__(self, split: Split):
        self.images, self.labels = split.images, split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


@numba.njit(cache=True, nogil=True)
def _channel_histograms(flat: np.ndarray) -> np.ndarray:
    hist = np.zeros((3, 256), dtype=np.int64)
    for i in range(flat.shape[0]):
        for c in range(3):
            hist[c, flat[i, c]] += 1
    return hist


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 scale), exact: computed from 256-bin histograms.

    A cached numba histogram: many times faster than numpy's float64 route (docs/BENCHMARKS.md,
    'prepare').
    """
    hist = _channel_histograms(images.reshape(-1, 3)).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    n = hist.sum(1)
    mean = (hist * values).sum(1) / n
    var = (hist * (values - mean[:, None]) ** 2).sum(1) / n
    return mean.tolist(), np.sqrt(var).tolist()


def write_beton(path: Path, split: Split, desc: str, workers: int = -1) -> None:
    """Write one beton straight to `path` (callers pass a temp path and rename it)."""
    import ffcv.writer as ffcv_writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    # FFCV's writer shows a bare tqdm bar; give it a name and an images/s unit. Only on a terminal:
    # elsewhere (a log file, CI) its carriage-return redraws would all land in the file, as
    # training/progress.py explains; the closing "wrote …" line says what was done.
    ffcv_writer.tqdm = functools.partial(tqdm, desc=desc, unit="img", unit_scale=True, leave=False,
                                         disable=not _is_terminal(sys.stderr))
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw", max_resolution=32),
                                       "label": IntField()}, num_workers=workers)
    # FFCV's writer waits for its worker processes' count of written images to reach the total,
    # sleeping between looks, and never asks whether they are alive: a worker that dies (a full
    # disk) left it waiting forever. Its sleep is where we ask, for this write only.
    plain_sleep, ffcv_writer.sleep = ffcv_writer.sleep, _WorkersAlive()
    try:
        writer.from_indexed_dataset(_ArrayDataset(split), chunksize=1000)
    except BaseException:
        for child in multiprocessing.active_children():
            child.kill()
        shm = getattr(writer, "metadata_sm", None)
        if shm is not None:
            with contextlib.suppress(OSError):
                shm.close()
                shm.unlink()
        raise
    finally:
        ffcv_writer.sleep = plain_sleep


class _WorkersAlive:
    """A sleep that raises once no worker process has been alive for three looks in a row. FFCV's
    loop reads its count, then sleeps: workers that finish during one sleep leave at most one more
    read and one more sleep before the loop ends, so two idle looks can still be a success; a third
    means the count will never be reached."""

    def __init__(self) -> None:
        self.idle = 0

    def __call__(self, seconds: float) -> None:
        time.sleep(seconds)
        self.idle = 0 if multiprocessing.active_children() else self.idle + 1
        if self.idle >= 3:
            raise UserError("FFCV's beton writer lost its worker processes before writing every image (a full "
                            "disk or a killed worker); nothing was replaced; free some space and prepare again")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _existing_is_valid(out_dir: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    if not (out_dir / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out_dir)
    except UserError:
        return None
    if verify_betons(out_dir, manifest) or verify_arrays(out_dir, manifest):
        return None
    if not has_betons(manifest) and ffcv_missing() is None:
        return None  # prepared without FFCV, which imports now: add the betons
    wanted = request.get("source")
    if wanted is not None and str(Path(wanted).expanduser().resolve()) != manifest.get("source"):
        raise UserError(f"{out_dir}/ already holds data prepared from {manifest.get('source')}; pass "
                        f"--force to replace it or --out to write elsewhere")
    if manifest.get("limit") != request["limit"]:
        raise UserError(f"{out_dir}/ already holds data prepared with limit={manifest.get('limit')}; "
                        f"pass --force to replace it or --out to write elsewhere")
    return manifest


def check_free_space(out_dir: Path, data: CifarData, betons: bool) -> None:
    """Refuse before writing when the folder cannot hold the new files beside the current ones
    (every file is written under a temp name and swapped in at the end): raw pixels once for the
    arrays and once more for the betons, with a tenth of headroom for their indexes."""
    raw = sum(s.images.nbytes + s.labels.nbytes for s in (data.train, data.test))
    need = int(raw * (2 if betons else 1) * 1.1) + (1 << 20)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise UserError(f"{out_dir} has {free / 1e6:,.0f} MB free but prepare writes about {need / 1e6:,.0f} MB "
                        "(betons and arrays beside the current files until they are swapped in); free some space "
                        "or choose another --out")


def _remove_stale_temps(out_dir: Path) -> None:
    # Left by a prepare that was SIGKILLed mid-write; never under a final name.
    for final in [beton_path(out_dir, s).name for s in SPLITS] + [*ARRAYS.values(), MANIFEST]:
        for tmp in out_dir.glob(f".{final}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir} ({exc.strerror}); choose another --out") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"cannot write to {out_dir} (permission denied); choose another --out")


def prepare(source: str | None, out_dir: str | Path = "data", limit: int | None = None,
            force: bool = False, log: Callable[[str], None] = print,
            check_counts: bool = True) -> PrepareResult:
    """`check_counts=False` admits smaller sources in the official layout (library use and tests
    only: the CLI always insists on 50,000 / 10,000)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if source is not None and not Path(source).expanduser().exists():
        raise UserError(f"source {source} does not exist; pass an existing .tar.gz, "
                        "cifar-10-batches-py/ folder or image folder (train/<class>/, test/<class>/), "
                        "or omit --source to download")
    if not force:
        existing = _existing_is_valid(out_dir, {"limit": limit, "source": source})
        if existing is not None:
            return PrepareResult(out_dir, existing, True, time.perf_counter() - start)

    _make_out_dir(out_dir)  # fail on an unusable --out before the slow read
    # One writer per data folder: two prepares racing on one --out would interleave their renames.
    with FolderLock(out_dir, "prepare"), rewriting_data(out_dir):
        manifest = _read_and_write(source, out_dir, limit, check_counts, log)
    return PrepareResult(out_dir, manifest, False, time.perf_counter() - start)


def _read_and_write(source: str | None, out_dir: Path, limit: int | None, check_counts: bool,
                    log: Callable[[str], None]) -> dict[str, Any]:
    if source is None:
        log(f"downloading {cifar_source.URL}")
        archive = cifar_source.download(out_dir)
        data = cifar_source.read_cifar10(archive)
    elif image_folder.is_image_folder(source):
        # The 50,000 / 10,000 counts are CIFAR-10's; an image folder has its own.
        data = image_folder.read_image_folder(source, limit)
    else:
        data = cifar_source.read_cifar10(source, check_counts=check_counts)
    if data.kind == cifar_source.SOURCE_KIND and not data.official:
        log(f"notice: {data.source} is valid CIFAR-10 but not the official release "
            "(md5 differs); using it as given")
    if limit is not None:
        data = CifarData(Split(data.train.images[:limit], data.train.labels[:limit]),
                         Split(data.test.images[:limit], data.test.labels[:limit]),
                         data.source, data.official, data.kind, data.classes)
    missing = ffcv_missing()
    if missing is not None:
        log(f"notice: FFCV does not import ({missing}); writing {', '.join(ARRAYS.values())} and {MANIFEST} "
            "without betons: train with --loader torch (or install FFCV and prepare again)")

    return write_prepared(data, out_dir, limit, betons=missing is None)


def write_prepared(data: CifarData, out_dir: Path, limit: int | None = None,
                   betons: bool | None = None) -> dict[str, Any]:
    """Write validated arrays as betons (when `betons`, default: where FFCV imports) + .npz
    arrays + manifest; returns the manifest.

    All files are written under temp names first and swapped in together (manifest last), so an
    interrupted or failed prepare leaves whatever was there before untouched; a folder re-prepared
    without FFCV loses its old betons once the new manifest (which lists none) is in place.
    """
    if betons is None:
        betons = ffcv_missing() is None
    _make_out_dir(out_dir)
    _remove_stale_temps(out_dir)
    check_free_space(out_dir, data, betons)
    mean, std = channel_stats(data.train.images)
    classes = list(data.classes)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": data.source,
        "source_kind": data.kind,
        "official": data.official,
        "limit": limit,
        "classes": classes,
        "image_shape": [32, 32, 3],
        "train_mean": mean,
        "train_std": std,
        "betons": list(SPLITS) if betons else [],
        "splits": {},
    }
    if data.kind == image_folder.SOURCE_KIND:
        manifest["image_method"] = image_folder.METHOD
    beton_finals = [beton_path(out_dir, s) for s in SPLITS] if betons else []
    finals = beton_finals + [arrays_path(out_dir, s) for s in SPLITS] + [out_dir / MANIFEST]
    with atomic_group(finals) as temps:
        beton_temps = dict(zip(SPLITS, temps[:len(beton_finals)]))
        array_temps = dict(zip(SPLITS, temps[len(beton_finals):len(beton_finals) + 2]))
        for name in SPLITS:
            split: Split = getattr(data, name)
            info: dict[str, Any] = {
                "count": int(len(split.labels)),
                "per_class": np.bincount(split.labels, minlength=len(classes)).tolist(),
            }
            if betons:
                tmp = beton_temps[name]
                write_beton(tmp, split, desc=f"{name}.beton")
                info.update(sha256=sha256_file(tmp), bytes=tmp.stat().st_size)
            # Plain-numpy copies (uncompressed: 150 MB for CIFAR-10's train split) let the torch
            # loader train and the analysis show and re-score images without FFCV (slow to import).
            tmp = array_temps[name]
            with open(tmp, "wb") as fh:
                np.savez(fh, images=split.images, labels=split.labels)
            info["arrays"] = {"file": ARRAYS[name], "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
            manifest["splits"][name] = info
        manifest["test_arrays"] = {"file": TEST_ARRAYS, "sha256": manifest["splits"]["test"]["arrays"]["sha256"]}
        temps[-1].write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / READERS_NAME).touch(exist_ok=True)  # what trainings lock while they read (common/lock.py)
    if not betons:
        # Betons of an earlier prepare: the new manifest lists none, so nothing reads them; they
        # go only after it is in place (a failed swap keeps the old set whole).
        for path in beton_finals or [beton_path(out_dir, s) for s in SPLITS]:
            path.unlink(missing_ok=True)
    return manifest
