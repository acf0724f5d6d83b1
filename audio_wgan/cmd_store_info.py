"""`audio-wgan store-info STORE [--json] [--verify]`: what a mel store holds, and whether
every chunk of it is intact."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store-info",
        help="rows, classes, rejected files and mel configuration of a mel store",
        description="Print the committed content of a Zarr mel store: live rows, classes with "
        "row counts, kept and rejected source files, mel configuration, size, fingerprint. "
        "A store with a lost chunk exits with status 2. --verify also decodes every chunk "
        "and checks it against the checksum the manifest keeps for it (exit status 2 and "
        "one line naming what is damaged).",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--verify", action="store_true",
                   help="decode every chunk and check it against its checksum")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from storage.mel_store import (
        MelStore,
        StoreError,
        describe,
        describe_verify,
        to_json,
        verify_summary,
    )

    try:
        with MelStore.open(args.store, check=not args.verify) as st:
            info = st.info()
            if args.verify:
                info["verify"] = st.verify()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(to_json(info))
    else:
        print(describe(info))
        if args.verify:
            print(describe_verify(info["verify"]))
    if args.verify and not info["verify"]["ok"]:
        raise UserError(verify_summary(args.store, info["verify"]))
    return 0
