"""`audio-wgan store-info STORE [--json] [--verify]`: what a mel store holds, and whether
every chunk of it is intact."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option


def register(app: typer.Typer) -> None:
    app.command(
        "store-info",
        short_help="rows, classes, rejected files and mel configuration of a mel store",
        help="Print the committed content of a Zarr mel store: live rows, classes with "
        "row counts, kept and rejected source files, mel configuration, size, fingerprint. "
        "A store with a lost chunk exits with status 2. --verify also decodes every chunk "
        "and checks it against the checksum the manifest keeps for it (exit status 2 and "
        "one line naming what is damaged).",
    )(command)


def command(
    store: Annotated[str, typer.Argument(metavar="STORE", show_default=False)],
    json: Annotated[bool, option("--json", help="machine-readable JSON")] = False,
    verify: Annotated[bool, option(
        "--verify", help="decode every chunk and check it against its checksum")] = False,
) -> int:
    return dispatch("store-info", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from storage.store_errors import StoreError
    from storage.store_summary import describe, quick_info, to_json

    # the manifest alone answers a plain look (no Zarr, no numpy); --verify, object stores
    # and anything it cannot vouch for open the store's arrays
    try:
        info = None if args.verify else quick_info(args.store)
        if info is None:
            info = _open_and_read(args.store, args.verify)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(to_json(info))
    else:
        print(describe(info))
        if args.verify:
            from storage.store_summary import describe_verify

            print(describe_verify(info["verify"]))
    if args.verify and not info["verify"]["ok"]:
        from storage.store_summary import verify_summary

        raise UserError(verify_summary(args.store, info["verify"]))
    return 0


def _open_and_read(store: str, verify: bool) -> dict:
    from storage.mel_store import MelStore

    with MelStore.open(store, check=not verify) as st:
        info = st.info()
        if verify:
            info["verify"] = st.verify()
    return info
