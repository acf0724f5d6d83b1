"""One writer per mel store: an OS file lock held for the whole precompute run.

`fcntl.flock` is tied to the open file, so a writer killed with SIGKILL releases it
automatically (no stale-lock cleanup, unlike pid files). Readers never take the lock:
they only see rows the committed manifest owns, and committed rows are never rewritten.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from storage.store_errors import StoreError

LOCK_FILE = ".precompute.lock"


class StoreBusyError(StoreError):
    """Another process is writing this store (one-line message)."""


class StoreLock:
    """Non-blocking exclusive lock on `<store>/.precompute.lock`; use as a context manager."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = self.store / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        self.store.mkdir(parents=True, exist_ok=True)
        fd = open_no_link(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise StoreBusyError(
                    f"store {self.store} is being written by another precompute{who}; "
                    "wait for it to finish") from None
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

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def open_no_link(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """os.open that never goes through a link (a link planted in the store must not
    redirect a write outside it) and opens only a regular file; StoreError in one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a link: a store's files are never written through "
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
