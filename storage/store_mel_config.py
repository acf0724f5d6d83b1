"""A store's mel configuration from the one it was made with and a run's overrides.

Zarr-free (the writer and the unchanged-store check in `storage.store_settled` both use it):
overrides are normalised (64, 64.0 and "64" are one setting), checked as a whole, and never
allowed to change an existing store's configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gan.mel_config import MelConfig
from storage.store_errors import StoreError

INT_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "frames", "split_hop_frames")
FLOAT_FIELDS = ("f_min", "f_max")


def resolve_mel_config(existing: dict[str, Any] | None, overrides: dict[str, Any] | None,
                       store: str | Path = "") -> MelConfig:
    """The store's config (or the defaults for a new store) with `overrides` applied,
    checked as a whole (`MelConfig.__post_init__`) before any store exists.

    Refuses (StoreError) overrides that would change an existing store's configuration:
    rows made with different parameters must never be mixed.
    """
    names = [f.name for f in dataclasses.fields(MelConfig)]
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise StoreError(f"unknown mel setting(s): {', '.join(unknown)} "
                         f"(known: {', '.join(names)})")
    try:
        for k in INT_FIELDS:
            if k in given:
                v = given[k]
                if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                    raise ValueError(f"{k} must be a whole number, got {v!r}")
                given[k] = int(v)  # 64, 64.0 and "64" are the same setting
        for k in FLOAT_FIELDS:
            if k in given:
                given[k] = float(given[k])
        base = dict(existing) if existing is not None else MelConfig().to_dict()
        cfg = MelConfig.from_dict({**base, **given})
    except (TypeError, ValueError) as exc:  # MelConfig checks itself as a whole
        raise StoreError(f"bad mel configuration: {exc}") from None
    if existing is not None:
        old = MelConfig.from_dict(existing)
        if cfg != old:
            diffs = ", ".join(f"{n} {getattr(old, n)} -> {getattr(cfg, n)}" for n in names
                              if getattr(old, n) != getattr(cfg, n))
            raise StoreError(f"store {store} was made with a different mel configuration "
                             f"({diffs}); use a new --store")
    return cfg
