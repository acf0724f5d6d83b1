"""`audio-wgan compact STORE [--json]`: drop the rows of replaced or deleted files."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="drop the dead rows (of replaced or deleted files) from a mel store",
        description="Copy the live rows of the mel store STORE into a new generation of its "
        "arrays and delete the old one, freeing the space of rows whose source files were "
        "replaced or deleted. Readers see the same rows before and after; a reader that has "
        "the store open keeps the old arrays until it closes (the next precompute or "
        "compact deletes them then). Precompute does this by itself once dead rows are a "
        "quarter of the store.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from storage.mel_store import MelStore, StoreError, disk_bytes, safe_text
    from storage.store_writer import MelStoreWriter

    try:
        MelStore.open(args.store).close()  # a one-line error for anything but a store
        bytes_before = disk_bytes(args.store)
        with MelStoreWriter.create_or_open(args.store) as w:
            dead = w.dead_rows()
            done = w.compact() if dead else {"dropped_rows": 0, "rows": w.manifest.rows,
                                             "generation": w.manifest.generation,
                                             "old_generation_kept": 0}
        done["bytes_before"], done["bytes"] = bytes_before, disk_bytes(args.store)
    except StoreError as exc:
        raise UserError(safe_text(str(exc))) from None
    if args.json:
        print(json.dumps(done, indent=2))
    elif not dead:
        print(f"compact: {args.store} has no dead rows ({done['rows']} rows)")
    else:
        kept = (" (the old arrays stay until the reader that has them open closes)"
                if done["old_generation_kept"] else "")
        print(safe_text(f"compact: dropped {done['dropped_rows']} dead rows, {done['rows']} "
                        f"rows kept; {done['bytes_before'] / 1e6:.1f} MB -> "
                        f"{done['bytes'] / 1e6:.1f} MB on disk{kept}"))
    return 0
