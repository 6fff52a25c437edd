"""One writer per output folder: an exclusive lock held for the life of a training, compare or
prepare process.

A resubmitted cluster job (or a second terminal) running `train --resume RUN` while the first is
still training RUN would otherwise write the same checkpoints from two processes. The lock is
`fcntl.flock` on `<folder>/.lock`, removed on a clean exit: the kernel drops the lock when its
holder dies (SIGKILL, power loss), so a lock file left by a dead process is simply taken over; the
file's text (pid, host, start time) only serves to name the holder in the refusal and to say that a
stale lock was taken over.
flock is per open file description, so a second lock from the *same* process also fails: the
training loop inside `compare` therefore does not lock the run folder again (`compare` holds the
comparison folder's lock, and each run folder lies inside it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from common.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """`with FolderLock(folder, "train"):` — refuse with one sentence when another live process
    holds it. `took_over` names a dead holder whose lock was taken over (for the log)."""

    def __init__(self, folder: str | Path, purpose: str):
        self.folder = Path(folder)
        self.purpose = purpose
        self.took_over: str | None = None
        self._fd: int | None = None
        self._created = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> FolderLock:
        self._created = not self.folder.exists()
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                # Read-only: flock needs no write access, and an fd open for writing would keep
                # the filesystem from being remounted read-only while we hold the lock.
                fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; "
                                "choose another output location") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise UserError(f"{self.folder} is in use by another process ({holder}); wait for it to finish "
                                f"or stop it, then retry") from None
            # The holder before us removes the file as it lets go; if that happened between our
            # open and our flock, we hold a lock on a file nobody else will open: start again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(fd)
        if previous:
            self.took_over = _describe(previous)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._fd = fd
        try:
            with open(self.path, "w") as fh:  # another open file: our flock is untouched by its close
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            self.release()
            raise UserError(f"cannot write the lock file {self.path}: {exc.strerror or exc}; "
                            "choose another output location") from None
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it: see acquire) and let go. Only a holder
        that dies leaves the file behind, for the next one to take over."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._created:
            # the folder exists only because of the lock (the command failed before writing
            # anything): leave no trace of it
            with contextlib.suppress(OSError):
                self.folder.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


READERS_NAME = ".readers.lock"


def reading_data(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """A shared lock on a data folder, held by a training for its whole run: `prepare` into the
    same folder (`rewriting_data`) is refused meanwhile, so the betons and manifest a run resumes
    from are never replaced under it. Any number of runs may read one folder. `prepare` creates the
    lock file with the data (pipeline/prepare.py) and nothing removes it (a reader leaving must not
    unlock the others); readers never create it, so reading leaves a data folder as it was. A
    folder prepared before the file existed is read unlocked until it is prepared again."""
    return _data_lock(folder, fcntl.LOCK_SH,
                      f"{folder} is being rewritten by `prepare`; wait for it to finish, then train")


def rewriting_data(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """The exclusive side of `reading_data`: held by `prepare` while it replaces a folder's files.
    A folder without the lock file (new, or prepared before it existed) has no reader to wait for."""
    return _data_lock(folder, fcntl.LOCK_EX,
                      f"{folder} is the data of a training that is running now; replacing its files would keep "
                      "that run from resuming: wait for it to finish (or stop it), or prepare into another --out")


@contextlib.contextmanager
def _data_lock(folder: str | Path, mode: int, refusal: str) -> Iterator[None]:
    """flock `mode` on the folder's READERS_NAME without waiting (refusal: the UserError's text);
    nothing to lock where the file is absent."""
    try:
        fd = os.open(Path(folder) / READERS_NAME, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(refusal) from None
        yield
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        record = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, object]) -> str:
    if not record:
        return "holder unknown"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
            f"{record.get('purpose', '?')} since {record.get('since', '?')}")
