"""One writer per mel store (and per checkpoint folder): an OS file lock held for the run.

`fcntl.flock` is tied to the open file, so a writer killed with SIGKILL releases it
automatically (no stale-lock cleanup, unlike pid files). Readers never take the lock:
they only see rows the committed manifest owns, and committed rows are never rewritten.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from storage.store_errors import StoreError

LOCK_FILE = ".precompute.lock"


class StoreBusyError(StoreError):
    """Another process is writing this store (one-line message)."""


class FolderLock:
    """Non-blocking exclusive lock on `<folder>/<name>` (created, never through a link,
    closed on exec so no child process inherits it); use as a context manager. `busy(pid)`
    makes the exception raised when another process holds it."""

    def __init__(self, folder: str | Path, name: str,
                 busy: Callable[[str], Exception]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._busy = busy
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = open_no_link(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._busy(f" (pid {holder})" if holder else "") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class StoreLock(FolderLock):
    """The one writer's lock on `<store>/.precompute.lock`."""

    def __init__(self, store: str | Path) -> None:
        def busy(who: str) -> Exception:
            return StoreBusyError(f"store {self.store} is being written by another "
                                  f"precompute{who}; wait for it to finish")

        super().__init__(store, LOCK_FILE, busy)
        self.store = Path(store)


def open_no_link(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """os.open that never goes through a link (a link planted in the store must not
    redirect a write outside it) and opens only a regular file; StoreError in one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a link: lock files are never opened through "
                             "links; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; remove it")
    return fd


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
