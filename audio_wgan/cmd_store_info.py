"""`audio-wgan store-info STORE [--json]`: what a mel store holds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store-info",
        help="rows, classes, rejected files and mel configuration of a mel store",
        description="Print the committed content of a Zarr mel store: live rows, classes with "
        "row counts, kept and rejected source files, mel configuration, size, fingerprint.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from storage.mel_store import MelStore, StoreError, describe, to_json

    try:
        info = MelStore.open(args.store).info()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    print(to_json(info) if args.json else describe(info))
    return 0
