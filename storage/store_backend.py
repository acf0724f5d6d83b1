"""One interface for where a mel store's bytes live, chosen by its location (lhotse's idea:
one registry of backends behind the same reader and writer).

- `LocalBackend`: a directory, with exactly the mechanisms the store had before object
  stores: manifest by temp file + fsync + rename + fsync of the directory
  (`storage.atomic_files`), writer lock by `flock` (`storage.store_lock`), reader leases
  by shared `flock` per generation (`storage.store_generations`), Zarr's LocalStore.
- `ObjectBackend` (`storage.store_object`): an `s3://` URL, with a conditional PUT for the
  manifest, a lease object for the writer and a grace period for old generations; Zarr's
  FsspecStore. Imported only when a URL is opened (local stores never load fsspec/s3fs).

The reader (`storage.mel_store`), writer (`storage.store_writer`) and manifest
(`storage.store_manifest`) call these methods and never ask which backend they have.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from storage.atomic_files import TMP_PREFIX, atomic_write_bytes
from storage.store_errors import MAX_METADATA_BYTES, StoreError, check_metadata_size
from storage.store_generations import (
    LEASE_PREFIX,
    ReaderLease,
    generations_on_disk,
    remove_generation,
    remove_unused_generations,
)
from storage.store_location import is_url, local_path
from storage.store_lock import LOCK_FILE, StoreLock
from storage.store_names import MANIFEST_FILE, disk_bytes

if TYPE_CHECKING:
    from storage.store_object import ObjectBackend


class Lock(Protocol):
    def acquire(self) -> Any: ...
    def release(self) -> None: ...
    @property
    def held(self) -> bool: ...


class StoreBackend(Protocol):
    """What the reader and writer need from where the store lives."""

    kind: str
    path: Any  # a Path (local) or the URL (object store): what messages show
    url: str
    location: str  # what another process opens: an absolute path, or the URL

    def exists(self) -> bool: ...
    def check_place(self) -> None: ...
    def read_bytes(self, name: str) -> bytes | None: ...
    def commit(self, name: str, data: bytes) -> None: ...
    def writer_lock(self) -> Lock: ...
    def reader_lease(self, generation: int) -> Lock: ...
    def zarr_store(self, read_only: bool = False) -> Any: ...
    def consolidate(self) -> None: ...
    def names(self) -> list[str]: ...
    def is_own_file(self, name: str) -> bool: ...
    def remove_partials(self) -> None: ...
    def would_create(self) -> Any: ...
    def remove_created(self, created: Any) -> None: ...
    def destroy(self) -> None: ...
    def disk_bytes(self) -> int: ...
    def generations(self) -> set[int]: ...
    def remove_generation(self, generation: int) -> None: ...
    def remove_unused_generations(self, current: int) -> list[int]: ...


class LocalBackend:
    """A store directory (see the module docstring)."""

    kind = "local"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = local_path(path)
        self.url = str(self.path)

    @property
    def location(self) -> str:
        return str(self.path.resolve())

    def __str__(self) -> str:
        return self.url

    def exists(self) -> bool:
        return self.path.is_dir()

    def check_place(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise StoreError(f"{p} exists and is not a directory; use a new --store")

    def read_bytes(self, name: str) -> bytes | None:
        """A metadata file's bytes (None if absent): a regular file, not a link, and at
        most MAX_METADATA_BYTES, so a manifest replaced by a link to /dev/zero (or a
        directory) is refused in one line instead of read until memory runs out."""
        path = self.path / name
        try:
            # O_NONBLOCK: a FIFO planted here must not hang the reader before fstat
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):  # no store there (yet)
            return None
        except OSError as exc:
            raise StoreError(f"{path} cannot be read: {exc.strerror or exc} (a link or "
                             "not a file?)") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{path} is not a regular file")
            check_metadata_size(path, st.st_size)
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(MAX_METADATA_BYTES + 1)
        finally:
            os.close(fd)

    def commit(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path / name, data, durable=True)

    def writer_lock(self) -> StoreLock:
        return StoreLock(self.path)

    def reader_lease(self, generation: int) -> ReaderLease:
        return ReaderLease(self.path, generation)

    def zarr_store(self, read_only: bool = False) -> Path:
        return self.path  # zarr opens its LocalStore on the directory

    def consolidate(self) -> None:
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our manifest/lock files are not Zarr nodes
            zarr.consolidate_metadata(str(self.path))

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def is_own_file(self, name: str) -> bool:
        return name == LOCK_FILE or name.startswith(LEASE_PREFIX)

    def remove_partials(self) -> None:
        """Temp files left by a killed writer (Zarr's `*.partial`, our manifest temp)."""
        for dirpath, _, names in os.walk(self.path):
            for n in names:
                if n.endswith(".partial") or n.startswith(f"{TMP_PREFIX}{MANIFEST_FILE}."):
                    try:
                        os.unlink(os.path.join(dirpath, n))
                    except OSError:
                        pass

    def would_create(self) -> Path | None:
        """The top-most folder creating the store would make (None: it exists)."""
        p = made = self.path
        while not made.parent.exists() and made.parent != made:
            made = made.parent
        return None if p.exists() else made

    def remove_created(self, created: Path | None) -> None:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)

    def destroy(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def disk_bytes(self) -> int:
        return disk_bytes(self.path)

    def generations(self) -> set[int]:
        return generations_on_disk(self.path)

    def remove_generation(self, generation: int) -> None:
        remove_generation(self.path, generation)

    def remove_unused_generations(self, current: int) -> list[int]:
        return remove_unused_generations(self.path, current)


def backend_for(location: str | os.PathLike[str] | StoreBackend,
                options: dict[str, Any] | None = None) -> StoreBackend:
    """The backend of `location`: itself when already one, an ObjectBackend for a URL
    (`options`: fsspec storage options), else a LocalBackend."""
    if isinstance(location, LocalBackend) or hasattr(location, "kind"):
        return location  # type: ignore[return-value]
    if is_url(location):
        from storage.store_object import ObjectBackend

        be: ObjectBackend = ObjectBackend(str(location), options)
        return be
    return LocalBackend(location)  # type: ignore[arg-type]
