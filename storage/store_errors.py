"""Errors of the mel store, shared by its reader, writer and lock."""

from __future__ import annotations


class StoreError(ValueError):
    """A mel store problem the user can fix; the message is one line."""
