"""Atomic file writes: temp file in the same folder, fsync, rename.

A crash or a full disk at any point leaves either the old file or the new one under the final
name, never a half-written one. The temp file lives beside the target so the rename never
crosses a filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from common.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the mode a plain open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def _temp_beside(path: Path) -> Path:
    """An empty temp file in the target's folder (so the final rename never crosses filesystems)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return Path(tmp)


def _explain_os_error(path: Path, exc: OSError) -> UserError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write to {path.parent}: permission denied or read-only; "
                         "choose another output location")
    if exc.errno == errno.ENOSPC:
        return UserError(f"no space left while writing {path}; free some disk space and retry "
                         "(the previous file, if any, is untouched)")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto `path`.

    Used for writers that want a file name rather than a handle (FFCV's DatasetWriter,
    matplotlib's savefig, torch.save).
    """
    path = Path(path)
    try:
        tmp_path = _temp_beside(path)
    except OSError as exc:
        raise _explain_os_error(path, exc) from None
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _explain_os_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temp paths for files that must appear together, or not at all.

    Nothing under a final name changes until every file is written. Then the last path (the
    group's marker, e.g. a manifest) is removed, the others are renamed into place, and the marker
    is renamed last: a reader that trusts the marker never sees a mix of old and new files.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in finals:
            temps.append(_temp_beside(path))
    except OSError as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise _explain_os_error(finals[len(temps)] if len(temps) < len(finals) else finals[-1], exc) from None
    try:
        yield temps
        for tmp in temps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        finals[-1].unlink(missing_ok=True)
        for tmp, path in zip(temps, finals):
            os.replace(tmp, path)
        for folder in {p.parent for p in finals}:
            _fsync_dir(folder)
    except OSError as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise _explain_os_error(finals[-1], exc) from None
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a handle whose contents replace `path` only when the block finishes cleanly."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` another name for `source`'s bytes, atomically: a hard link (no copy, no extra
    disk) where the filesystem has them, else a copy. `path` is replaced whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.unlink()  # os.link will not replace the empty temp file atomic_path made
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(source, tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
