"""`audio-wgan compact STORE [--json] [--drop-damaged]`: drop the rows of replaced or
deleted files (and, on request, of damaged chunks)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option


def register(app: typer.Typer) -> None:
    app.command(
        "compact",
        short_help="drop the dead rows (of replaced or deleted files) from a mel store",
        help="Copy the live rows of the mel store STORE into a new generation of its "
        "arrays and delete the old one, freeing the space of rows whose source files were "
        "replaced or deleted. Readers see the same rows before and after; a reader that has "
        "the store open keeps the old arrays until it closes (the next precompute or "
        "compact deletes them then). Precompute does this by itself once dead rows are a "
        "quarter of the store. A damaged store (see `store-info --verify`) is refused in "
        "one line; --drop-damaged first stops keeping the files with rows in "
        "damaged chunks (missing, not decoding, not matching their checksum: see "
        "`store-info --verify`), so their rows are dropped too and the next precompute "
        "computes those files again.",
    )(command)


def command(
    store: Annotated[str, typer.Argument(metavar="STORE", show_default=False)],
    json: Annotated[bool, option("--json", help="machine-readable JSON")] = False,
    drop_damaged: Annotated[bool, option(
        "--drop-damaged", help="drop the rows of damaged chunks; their files are re-queued "
        "for the next precompute")] = False,
) -> int:
    return dispatch("compact", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from storage.mel_store import (
        MelStore,
        StoreError,
        disk_bytes,
        safe_text,
        to_json,
        verify_summary,
    )
    from storage.store_writer import MelStoreWriter

    damage: dict = {"damaged_chunks": [], "requeued": []}
    try:
        # a one-line error for anything but a store, or for a damaged one (every chunk is
        # decoded and checked: what --drop-damaged is for)
        with MelStore.open(args.store, check=not args.drop_damaged) as st:
            verified = st.verify() if not args.drop_damaged else {"ok": True}
        if not verified["ok"]:
            raise StoreError(verify_summary(args.store, verified))
        bytes_before = disk_bytes(args.store)
        with MelStoreWriter.create_or_open(args.store, check=not args.drop_damaged) as w:
            if args.drop_damaged:
                damage = w.drop_damaged()
            dead = w.dead_rows()
            done = w.compact() if dead else {"dropped_rows": 0, "rows": w.manifest.rows,
                                             "generation": w.manifest.generation,
                                             "old_generation_kept": 0}
        done["bytes_before"], done["bytes"] = bytes_before, disk_bytes(args.store)
    except StoreError as exc:
        raise UserError(safe_text(str(exc))) from None
    done.update(damage)
    if args.json:
        print(to_json(done))
        return 0
    if damage["damaged_chunks"]:
        print(safe_text(f"compact: {len(damage['damaged_chunks'])} damaged chunk(s); "
                        f"{len(damage['requeued'])} file(s) re-queued for the next "
                        f"precompute: {', '.join(damage['requeued']) or '-'}"))
    if not dead:
        print(f"compact: {args.store} has no dead rows ({done['rows']} rows)")
    else:
        kept = (" (the old arrays stay until the reader that has them open closes)"
                if done["old_generation_kept"] else "")
        print(safe_text(f"compact: dropped {done['dropped_rows']} dead rows, {done['rows']} "
                        f"rows kept; {done['bytes_before'] / 1e6:.1f} MB -> "
                        f"{done['bytes'] / 1e6:.1f} MB on disk{kept}"))
    return 0
