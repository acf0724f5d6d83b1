"""Errors of the mel store, shared by its reader, writer and lock."""

from __future__ import annotations


class StoreError(ValueError):
    """A mel store problem the user can fix; the message is one line."""


# the largest manifest (or other metadata document) a store may read: ~200 bytes a file,
# so room for millions of files; anything larger is damage or an attack, not a store
MAX_METADATA_BYTES = 512 << 20


def check_metadata_size(where: object, size: int) -> None:
    if size > MAX_METADATA_BYTES:
        raise StoreError(f"{where} is {size} bytes, more than any store's metadata "
                         f"({MAX_METADATA_BYTES}); it is damaged or not a store's")
