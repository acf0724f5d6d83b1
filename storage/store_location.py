"""Where a mel store lives: a local directory, or a URL on S3-compatible object storage.

A `--store` value holding `://` (other than `file://`) is a URL; everything else is a
local path, handled exactly as before object stores existed. Object stores are reached with
fsspec/s3fs (the `scale` extra): credentials and endpoint come from the usual AWS variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3,
AWS_PROFILE, ...), which botocore reads itself, plus any fsspec `storage_options` given
as JSON in AUDIO_WGAN_STORAGE_OPTIONS. Errors from the object store become one line here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from storage.store_errors import StoreError

STORAGE_OPTIONS_ENV = "AUDIO_WGAN_STORAGE_OPTIONS"
OBJECT_PROTOCOLS = ("s3", "s3a")  # conditional PUTs (If-Match / If-None-Match) are wired


def is_url(location: object) -> bool:
    """Whether `location` names an object store (not a local path)."""
    if isinstance(location, os.PathLike):
        return False
    text = str(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() \
        and scheme.lower() != "file"


def local_path(location: str | os.PathLike[str]) -> Path:
    """A local location as a Path (`file://` stripped)."""
    text = os.fspath(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def storage_options(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options: AUDIO_WGAN_STORAGE_OPTIONS (JSON), then `extra`. Listings are never
    cached: another process's writes must be seen."""
    opts: dict[str, Any] = {}
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if raw:
        try:
            given = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{STORAGE_OPTIONS_ENV} is not a JSON object: {exc}") from None
        if not isinstance(given, dict):
            raise StoreError(f"{STORAGE_OPTIONS_ENV} is not a JSON object")
        opts.update(given)
    opts.update(extra or {})
    opts.setdefault("use_listings_cache", False)
    return opts


def check_protocol(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme not in OBJECT_PROTOCOLS:
        raise StoreError(f"store {url}: only s3:// object stores are supported (the manifest "
                         f"commit needs conditional writes), not {scheme}://")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        raise StoreError(f"store {url} needs s3fs: pip install 'audio-wgan[scale]'") from None
    return scheme


def url_bytes(url: str) -> int:
    """Bytes of every object under a store URL (0 when there are none)."""
    import fsspec

    check_protocol(url)
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options())
        return int(fs.du(root.rstrip("/"), total=True))
    except FileNotFoundError:
        return 0
    except Exception as exc:  # noqa: BLE001 - whatever the object store raised
        raise object_error(url, exc, "listing") from None


def object_error(url: str, exc: BaseException, doing: str = "") -> StoreError:
    """A one-line StoreError for whatever the object store (or the way to it) raised."""
    what = f"{doing} " if doing else ""
    code, text = _error_code(exc)
    if code == "NoSuchBucket":
        bucket = url.partition("://")[2].split("/", 1)[0]
        return StoreError(f"store {url}: bucket {bucket} does not exist (create it, or check "
                          "AWS_ENDPOINT_URL)")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                "ExpiredToken", "InvalidClientTokenId", "NoCredentials") \
            or type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        why = code or type(exc).__name__
        return StoreError(f"store {url}: the object store refused the credentials ({why}: "
                          f"{text}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if code in ("AccessDenied", "AllAccessDisabled") or isinstance(exc, PermissionError):
        return StoreError(f"store {url}: access denied {what}({code or 'Forbidden'}: {text})")
    if type(exc).__name__ in ("EndpointConnectionError", "ClientConnectorError",
                              "ConnectTimeoutError", "ConnectionRefusedError") \
            or isinstance(exc, ConnectionError):
        return StoreError(f"store {url}: cannot reach the object store ({text}); check "
                          "AWS_ENDPOINT_URL")
    return StoreError(f"store {url}: {what}failed ({code + ': ' if code else ''}{text})")


def _error_code(exc: BaseException) -> tuple[str, str]:
    """(S3 error code or "", one-line message) from an exception or its causes."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        resp = getattr(seen, "response", None)
        if isinstance(resp, dict) and "Error" in resp:
            err = resp["Error"]
            return str(err.get("Code", "")), _line(err.get("Message") or seen)
        seen = seen.__cause__ or seen.__context__
    return "", _line(exc)


def _line(x: object) -> str:
    text = str(x) or type(x).__name__
    return " ".join(text.split())[:300]


def beside_store(store_path: str | Path, kind: str) -> Path:
    """A folder of things kept about a store, `<store>.<kind>` beside a local store (never
    inside it: the store has one writer, precompute); for a store URL (s3://...), under
    ./work/<kind>s/ here."""
    if is_url(store_path):
        url = str(store_path).rstrip("/")
        name = url.rsplit("/", 1)[-1] or "store"
        tag = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
        return Path("work", f"{kind}s").resolve() / f"{name}-{tag}.{kind}"
    p = Path(store_path).resolve()
    return p.parent / f"{p.name}.{kind}"
