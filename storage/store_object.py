"""The mel store on S3-compatible object storage: the guarantees of the local store, by the
mechanisms an object store has (no rename, no flock, no fsync of a directory).

- Manifest commit: one PUT of `manifest.json`, conditional on the ETag this writer last
  read or wrote (`If-Match`; `If-None-Match: *` for a store's first). A PUT is atomic (a
  reader GETs the old object or the new one, never a mix), so readers see only committed
  rows; a killed writer leaves the last committed manifest serving; and a writer that a
  newer one has overtaken (its lease lapsed) is refused instead of overwriting what the
  newer one committed.
- Writer lock: a lease object `.precompute.lease` created only if absent (`If-None-Match:
  *`), holding the holder's id and an expiry, renewed (`If-Match` on its own ETag) by a
  thread while the writer works. A second writer is refused in one line naming the holder;
  a dead writer's lease expires and the next writer takes it over (again by `If-Match`, so
  two would-be successors cannot both win). Each commit first checks that the lease is
  still this writer's.
- Compaction: readers hold no lease (they may have read-only credentials); an old
  generation is deleted only once a grace period has passed since a writer first found it
  retired (`.retired-gen<g>` records when), by a later writer or the compaction itself.
  A reader open for longer than the grace period on a store compacted meanwhile gets a
  one-line error on its next read and reopens.

Rows are written as Zarr chunk objects through `zarr.storage.FsspecStore`; a chunk PUT is
atomic too, so a chunk that also holds committed rows is never seen half written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from gan.limits import SettingError, env_number
from storage.store_errors import StoreError, check_metadata_size
from storage.store_generations import GEN_DIR
from storage.store_location import check_protocol, object_error, storage_options
from storage.store_lock import StoreBusyError
from storage.store_names import ARRAY_NAMES

LEASE_FILE = ".precompute.lease"
RETIRED_PREFIX = ".retired-gen"
LEASE_ENV = "AUDIO_WGAN_STORE_LEASE_S"
GRACE_ENV = "AUDIO_WGAN_STORE_GRACE_S"
DEFAULT_LEASE_S = 60.0  # renewed every third of it while writing
DEFAULT_GRACE_S = 3600.0  # readers open longer than this on a compacted store must reopen
TAKE_RETRIES = 5


class ObjectBackend:
    """A mel store under an `s3://bucket/prefix` URL (see the module docstring)."""

    kind = "object"

    def __init__(self, url: str, options: dict[str, Any] | None = None,
                 lease_s: float | None = None, grace_s: float | None = None) -> None:
        import fsspec

        check_protocol(url)
        self.url = url.rstrip("/")
        self.path = self.url  # what MelStore/MelStoreWriter show as their path
        self.location = self.url
        self.options = storage_options(options)
        try:
            self.lease_s = float(lease_s if lease_s is not None
                                 else env_number(LEASE_ENV, DEFAULT_LEASE_S))
            self.grace_s = float(grace_s if grace_s is not None
                                 else env_number(GRACE_ENV, DEFAULT_GRACE_S, allow_zero=True))
        except SettingError as exc:
            raise StoreError(str(exc)) from None
        if not self.lease_s > 0 or self.grace_s < 0:
            raise StoreError(f"{LEASE_ENV} must be > 0 and {GRACE_ENV} >= 0 (seconds)")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        except (ValueError, TypeError, ImportError) as exc:
            raise object_error(self.url, exc, "opening") from None
        self.root = root.rstrip("/")
        self.bucket, _, self.key = self.root.partition("/")
        self._etags: dict[str, str | None] = {}  # of the objects last read or committed
        self._zarr: Any = None
        self.lease: ObjectLease | None = None

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------------ objects
    def _obj(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name

    def call(self, op: str, doing: str, **kw: Any) -> Any:
        """One S3 call (s3fs translates its errors); any failure is one line."""
        try:
            return self.fs.call_s3(op, Bucket=self.bucket, **kw)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/s3fs errors alike
            raise object_error(self.url, exc, doing) from None

    def get(self, name: str) -> tuple[bytes, str] | None:
        """(content, ETag) of object `name`, or None when it does not exist: one GET."""
        from fsspec.asyn import sync

        async def read() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._obj(name))
            try:
                check_metadata_size(f"{self.url}/{name}", int(resp.get("ContentLength", 0)))
                return await resp["Body"].read(), str(resp.get("ETag", ""))
            finally:
                resp["Body"].close()

        try:
            return sync(self.fs.loop, read)
        except FileNotFoundError as exc:
            if _code(exc) in ("NoSuchKey", "404", ""):
                return None
            raise object_error(self.url, exc, f"reading {name}") from None
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise object_error(self.url, exc, f"reading {name}") from None

    def put(self, name: str, data: bytes, *, if_match: str | None = None,
            if_absent: bool = False) -> str | None:
        """PUT object `name`; None when its condition failed (someone else wrote it first),
        else the new ETag."""
        cond: dict[str, str] = {}
        if if_match is not None:
            cond["IfMatch"] = if_match
        elif if_absent:
            cond["IfNoneMatch"] = "*"
        try:
            out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self._obj(name),
                                  Body=data, **cond)
        except FileExistsError:  # If-None-Match failed
            return None
        except FileNotFoundError as exc:  # If-Match on an object deleted meanwhile
            if cond and _code(exc) in ("NoSuchKey", "404"):
                return None
            raise object_error(self.url, exc, f"writing {name}") from None
        except OSError as exc:
            if cond and (exc.errno == errno.EINVAL or _code(exc) in (
                    "PreconditionFailed", "ConditionalRequestConflict", "412")):
                return None
            raise object_error(self.url, exc, f"writing {name}") from None
        except Exception as exc:  # noqa: BLE001
            raise object_error(self.url, exc, f"writing {name}") from None
        return str(out.get("ETag", ""))

    def delete(self, name: str, if_match: str | None = None) -> None:
        kw = {"IfMatch": if_match} if if_match else {}
        with contextlib.suppress(Exception):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._obj(name), **kw)

    def probe(self) -> str:
        """"absent", "store" (objects under the prefix) or "file" (an object at the prefix
        itself); a missing bucket or refused credentials are a one-line StoreError."""
        prefix = f"{self.key}/" if self.key else ""
        out = self.call("list_objects_v2", "listing", Prefix=prefix, MaxKeys=1)
        if out.get("KeyCount", len(out.get("Contents", []))):
            return "store"
        if self.key:
            try:
                self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
                return "file"
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001
                raise object_error(self.url, exc, "listing") from None
        return "absent"

    def names(self) -> list[str]:
        """Names right under the store prefix (objects and "folders")."""
        try:
            listed = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise object_error(self.url, exc, "listing") from None
        return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in listed} - {""})

    def remove_tree(self, name: str = "") -> None:
        path = f"{self.root}/{name}" if name else self.root
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise object_error(self.url, exc, f"deleting {name or 'the store'}") from None

    # ------------------------------------------------------------------ backend interface
    def exists(self) -> bool:
        return self.probe() == "store"

    def check_place(self) -> None:
        if self.probe() == "file":
            raise StoreError(f"{self.url} is an object, not a store prefix; use a new --store")

    def read_bytes(self, name: str) -> bytes | None:
        """Object `name` (None if absent); its ETag is what `commit(name)` expects."""
        got = self.get(name)
        self._etags[name] = got[1] if got else None
        return got[0] if got else None

    def commit(self, name: str, data: bytes) -> None:
        """One PUT conditional on the ETag last read (see the module docstring); StoreError
        when another writer committed since, or this writer's lease is gone."""
        if self.lease is not None:
            self.lease.confirm()
        seen = self._etags.get(name)
        etag = self.put(name, data, if_match=seen, if_absent=seen is None)
        if etag is None:
            raise StoreError(f"store {self.url}: another writer committed {name} since this "
                             "one read it (this writer's lease lapsed?); this run's "
                             "uncommitted rows were not committed, re-run precompute")
        self._etags[name] = etag

    def writer_lock(self) -> ObjectLease:
        self.lease = ObjectLease(self, self.lease_s)
        return self.lease

    def reader_lease(self, generation: int) -> _NoLease:
        return _NoLease()

    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        if self._zarr is None or self._zarr.read_only != read_only:
            opts = {**self.options, "asynchronous": True}
            try:
                self._zarr = FsspecStore.from_url(self.url, storage_options=opts,
                                                  read_only=read_only)
            except Exception as exc:  # noqa: BLE001
                raise object_error(self.url, exc, "opening") from None
        return self._zarr

    def consolidate(self) -> None:
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our manifest/lease objects are not Zarr nodes
            zarr.consolidate_metadata(self.zarr_store(read_only=False))

    def is_own_file(self, name: str) -> bool:
        """Objects of the store machinery, not Zarr's (a store being created has them)."""
        return name == LEASE_FILE or name.startswith(RETIRED_PREFIX)

    def remove_partials(self) -> None:
        """Nothing to do: a PUT is whole or absent (uncommitted rows are the writer's)."""

    def would_create(self) -> bool:
        return self.probe() == "absent"

    def remove_created(self, created: bool) -> None:
        if created:
            with contextlib.suppress(StoreError):
                self.remove_tree()

    def destroy(self) -> None:
        self.remove_tree()

    def disk_bytes(self) -> int:
        try:
            return int(self.fs.du(self.root, total=True))
        except FileNotFoundError:
            return 0
        except Exception as exc:  # noqa: BLE001
            raise object_error(self.url, exc, "listing") from None

    # ------------------------------------------------------------------ generations
    def generations(self) -> set[int]:
        names = self.names()
        found = {0} if any(n in names for n in ARRAY_NAMES) else set()
        found |= {int(m.group(1)) for n in names if (m := GEN_DIR.match(n))}
        return found

    def remove_generation(self, generation: int) -> None:
        if generation:
            self.remove_tree(f"gen{generation}")
        else:
            for name in ARRAY_NAMES:
                self.remove_tree(name)

    def remove_unused_generations(self, current: int) -> list[int]:
        """Delete generations above `current` (never committed) at once, and older ones
        once `grace_s` has passed since a writer first saw them retired."""
        removed = []
        now = time.time()
        for g in sorted(self.generations() - {current}):
            if g < current:
                got = self.get(f"{RETIRED_PREFIX}{g}")
                since = _retired_at(got[0]) if got else None
                if since is None:
                    since = now
                    self.put(f"{RETIRED_PREFIX}{g}", json.dumps({"at": now}).encode())
                if now - since < self.grace_s:
                    continue
            self.remove_generation(g)
            self.delete(f"{RETIRED_PREFIX}{g}")
            removed.append(g)
        left = self.generations() | {current}
        for n in self.names():  # markers of generations gone (a clean-up killed midway)
            g = n[len(RETIRED_PREFIX):]
            if n.startswith(RETIRED_PREFIX) and g.isdigit() and int(g) not in left:
                self.delete(n)
        return removed


class ObjectLease:
    """The writer lease object (see the module docstring); acquire/release like StoreLock."""

    def __init__(self, backend: ObjectBackend, lease_s: float) -> None:
        self.backend = backend
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._etag: str | None = None
        self._expires = 0.0
        self._lost = ""
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> tuple[bytes, float]:
        expires = time.time() + self.lease_s
        doc = {"holder": self.holder, "expires": expires, "lease_s": self.lease_s,
               "expires_utc": _utc(expires)}
        return json.dumps(doc).encode(), expires

    def acquire(self) -> ObjectLease:
        be = self.backend
        for _ in range(TAKE_RETRIES):
            got = be.get(LEASE_FILE)
            data, expires = self._doc()
            if got is None:
                etag = be.put(LEASE_FILE, data, if_absent=True)
            else:
                other = _lease_doc(got[0])
                if other and float(other.get("expires", 0)) > time.time():
                    raise StoreBusyError(
                        f"store {be.url} is being written by another precompute (holder "
                        f"{other.get('holder', '?')}, lease until "
                        f"{_utc(float(other['expires']))}); wait for it to finish or for "
                        "its lease to expire")
                etag = be.put(LEASE_FILE, data, if_match=got[1])  # take over a lapsed lease
            if etag is not None:
                self._etag, self._expires = etag, expires
                self._stop.clear()
                self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                name="mel-store-lease")
                self._thread.start()
                return self
        raise StoreBusyError(f"store {be.url}: other writers keep taking its lease; try again")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with contextlib.suppress(StoreError):  # unreachable now: the next commit decides
                self.renew()
            if self._lost:
                return

    def renew(self) -> None:
        """Extend the lease (If-Match on its own ETag); a lease taken over is lost for good."""
        with self._mutex:
            if self._lost or self._etag is None:
                return
            data, expires = self._doc()
            etag = self.backend.put(LEASE_FILE, data, if_match=self._etag)
            if etag is None:
                self._lost = "another writer took its lease over"
            else:
                self._etag, self._expires = etag, expires

    def confirm(self) -> None:
        """StoreError unless the lease is still this writer's and unexpired (one HEAD)."""
        with self._mutex:
            why = self._lost
            if not why and time.time() >= self._expires:
                why = "its lease expired before it could be renewed"
            if not why:
                try:
                    head = self.backend.fs.call_s3("head_object", Bucket=self.backend.bucket,
                                                   Key=self.backend._obj(LEASE_FILE))
                    if str(head.get("ETag", "")) != self._etag:
                        why = "another writer took its lease over"
                except FileNotFoundError:
                    why = "its lease object was deleted"
                except Exception as exc:  # noqa: BLE001
                    raise object_error(self.backend.url, exc, "checking the lease") from None
            if why:
                self._lost = why
                raise StoreError(f"store {self.backend.url}: this writer can no longer commit "
                                 f"({why}); its uncommitted rows were not committed, re-run "
                                 "precompute")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._mutex:
            if self._etag is not None and not self._lost:
                self.backend.delete(LEASE_FILE, if_match=self._etag)
            self._etag = None

    @property
    def held(self) -> bool:
        return self._etag is not None and not self._lost

    def __enter__(self) -> ObjectLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _NoLease:
    """Readers of an object store hold no lease: compaction waits a grace period instead."""

    held = True

    def acquire(self) -> _NoLease:
        return self

    def release(self) -> None:
        pass


def write_lease(backend: ObjectBackend, holder: str, expires: float) -> None:
    """Put a lease object as some writer would have left it (tests: a dead writer's)."""
    doc = {"holder": holder, "expires": expires, "lease_s": backend.lease_s,
           "expires_utc": _utc(expires)}
    backend.put(LEASE_FILE, json.dumps(doc).encode())


def read_lease(backend: ObjectBackend) -> dict[str, Any] | None:
    got = backend.get(LEASE_FILE)
    return _lease_doc(got[0]) if got else None


def _lease_doc(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None  # unreadable: treated as lapsed
    return doc if isinstance(doc, dict) else None


def _retired_at(data: bytes) -> float | None:
    try:
        return float(json.loads(data)["at"])
    except (ValueError, KeyError, TypeError):
        return None


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _code(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    resp = getattr(cause, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""
