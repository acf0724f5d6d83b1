"""Generations of a mel store's arrays, and the reader leases that keep one alive.

Compaction never rewrites the arrays readers may have open: it copies the live rows into
a new generation (`gen<g>/` inside the store; generation 0 is the group root, as written
before compaction existed), then commits the manifest that points at it. An old generation
is deleted only once no reader holds it: every `MelStore` holds a shared `flock` on
`.readers-gen<g>.lock` while it is open, and the writer deletes generation g only if it can
take that lock exclusively. `fcntl.flock` is released by the kernel when its holder dies,
so a killed reader never pins a generation for good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import weakref
from collections.abc import Iterator
from pathlib import Path

from storage.store_errors import StoreError
from storage.store_names import ARRAY_NAMES

GEN_DIR = re.compile(r"^gen(\d+)$")
LEASE_PREFIX = ".readers-gen"
LEASE_RETRIES = 20


def generation_prefix(generation: int) -> str:
    """Path of a generation's arrays inside the store group ("" for the root)."""
    return f"gen{generation}/" if generation else ""


def lease_path(store: Path, generation: int) -> Path:
    return store / f"{LEASE_PREFIX}{generation}.lock"


class ReaderLease:
    """A shared lock on one generation, held from `acquire` until `release`, or until the
    lease is garbage collected or its process exits. Stores on read-only media cannot be
    leased, nor compacted: no lease is taken there."""

    def __init__(self, store: Path, generation: int) -> None:
        self.store = store
        self.generation = generation
        self._close: weakref.finalize | None = None

    def acquire(self) -> ReaderLease:
        try:  # read-only is enough for flock: a lease file another user made works too
            fd = os.open(lease_path(self.store, self.generation),  # never through a link,
                         os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o644)  # and no hang on a planted FIFO
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return self  # read-only store: nobody can compact it either
            raise StoreError(f"cannot open the reader lease of {self.store}: "
                             f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"the reader lease of {self.store} is not a regular file; "
                             "remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a generation is deleted
        except BaseException:
            os.close(fd)
            raise
        self._close = weakref.finalize(self, os.close, fd)  # closing the fd drops the lock
        return self

    def release(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    @property
    def held(self) -> bool:
        return self._close is not None and self._close.alive


def generations_on_disk(store: Path) -> set[int]:
    """Generations whose arrays (or part of them) exist in the store directory."""
    found = set()
    if any((store / name).exists() for name in ARRAY_NAMES):
        found.add(0)
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return found
    for n in names:
        m = GEN_DIR.match(n)
        if m:
            found.add(int(m.group(1)))
    return found


def remove_generation(store: Path, generation: int) -> None:
    """Delete a generation's arrays (the caller holds the writer lock)."""
    if generation:
        shutil.rmtree(store / f"gen{generation}", ignore_errors=True)
    else:
        for name in ARRAY_NAMES:
            shutil.rmtree(store / name, ignore_errors=True)


def remove_unused_generations(store: Path, current: int) -> list[int]:
    """Delete every generation but `current` that no reader holds; return those deleted.

    Generations above `current` were never committed (a compaction killed before its
    manifest commit): no reader can hold them. Older ones go when their lease is free;
    a reader that still has one open keeps it until a later writer finds it free.
    """
    removed = []
    for g in sorted(generations_on_disk(store) - {current}):
        if g > current:
            remove_generation(store, g)
            removed.append(g)
            continue
        path = lease_path(store, g)
        with _unleased(path, create=True) as free:
            if free:
                remove_generation(store, g)
                # a reader waiting on this lock re-reads the manifest and moves on
                os.unlink(path)
                removed.append(g)
    kept = generations_on_disk(store) | {current}
    for n in os.listdir(store):  # lease files of generations gone (a killed clean-up)
        g = n[len(LEASE_PREFIX):-len(".lock")]
        if n.startswith(LEASE_PREFIX) and n.endswith(".lock") and g.isdigit() \
                and int(g) not in kept:
            with _unleased(store / n, create=False) as free, contextlib.suppress(OSError):
                if free:
                    os.unlink(store / n)
    return removed


@contextlib.contextmanager
def _unleased(path: Path, create: bool) -> Iterator[bool]:
    """Whether no reader holds the lease file `path`; if none does, readers wait until the
    block ends (the lease is held exclusively meanwhile)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
                     | (os.O_CREAT if create else 0), 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a reader has this generation open
            yield False
            return
        yield True
    finally:
        os.close(fd)
