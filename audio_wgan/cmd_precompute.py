"""`audio-wgan precompute DATA_DIR --store STORE`: run the precompute flow."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from audio_wgan.params import output_dir, ranged
from gan.limits import BATCH_FILES, WORKERS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "precompute",
        help="compute log-mels of DATA_DIR/<class>/* clips into a Zarr store (incremental)",
        description="Scan DATA_DIR/<class>/** for audio (wav, flac, ogg, mp3, ...), decode, "
        "downmix, resample, compute log-mels and append them to the Zarr store STORE. "
        "Re-running only processes new or changed files. Bad files are rejected with a "
        "reason (see store-info), never fatal. Mel options apply to a new store; an existing "
        "store keeps its configuration and refuses a different one.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--store", required=True, metavar="STORE", help="Zarr store directory")
    mel = p.add_argument_group("mel configuration (new stores; defaults: the seed's 128x256 "
                               "log-mels at 22.05 kHz)")
    mel.add_argument("--sample-rate", type=int, metavar="HZ")
    mel.add_argument("--n-fft", type=int, metavar="N")
    mel.add_argument("--hop-length", type=int, metavar="N")
    mel.add_argument("--n-mels", type=int, metavar="N")
    mel.add_argument("--frames", type=int, metavar="N", help="frames per example")
    mel.add_argument("--f-min", type=float, metavar="HZ")
    mel.add_argument("--f-max", type=float, metavar="HZ")
    mel.add_argument("--long-clip", choices=("split", "crop"), dest="long_clip_policy",
                     help="clips longer than one example: split into several or crop")
    mel.add_argument("--split-hop-frames", type=int, metavar="N",
                     help="hop between split examples (default: one example, no overlap)")
    mel.add_argument("--tail-policy", choices=("end", "pad"),
                     help="the last example of a split clip: end (default; it ends at the "
                     "clip's end, overlapping the one before) or pad (zero-padded remainder, "
                     "as stores made before this option)")
    mel.add_argument("--pad-policy", choices=("noise", "loop", "zero-end"),
                     help="clips shorter than one example: noise (default; padded with the "
                     "clip's own noise floor), loop (repeated) or zero-end (zero-padded)")
    p.add_argument("--workers", type=ranged(WORKERS, "--workers"), metavar="N",
                   help=f"threads or worker processes, 1..{WORKERS.hi} (default: one per "
                   "core)")
    p.add_argument("--pool", choices=("threads", "processes", "dask"), default="threads",
                   help="run files on threads (default; no start-up cost), on worker "
                   "processes (free of the GIL; each takes ~1.5 s to start, so for large "
                   "sets of short clips) or on a Dask cluster (a local one of --workers "
                   "processes, or --dask-address; needs audio-wgan[scale])")
    p.add_argument("--dask-address", metavar="URL",
                   help="with --pool dask: the scheduler of an existing Dask cluster, e.g. "
                   "tcp://host:8786 (its workers must see DATA_DIR at the same path)")
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="where the mel runs: auto (a CUDA GPU when present), cpu, cuda, "
                   "cuda:N (default auto)")
    p.add_argument("--batch-size", type=ranged(BATCH_FILES, "--batch-size"), default=256,
                   metavar="N", help=f"files per write batch, 1..{BATCH_FILES.hi}, at most "
                   "32 MB of rows (default 256)")
    p.add_argument("--compact", choices=("auto", "always", "never"), default="auto",
                   help="drop the rows of replaced or deleted files by rewriting the live "
                   "ones: auto (once they are a quarter of the store and fill a chunk), "
                   "always, never (default auto; see also `audio-wgan compact`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


COMPACT = {"auto": None, "always": True, "never": False}


MEL_ARGS = ("sample_rate", "n_fft", "hop_length", "n_mels", "frames", "f_min", "f_max",
            "long_clip_policy", "split_hop_frames", "tail_policy", "pad_policy")


def run(args: argparse.Namespace) -> int:
    # a temporary Prefect server started for this run has nowhere to send telemetry
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from audio_wgan.cli import UserError
    from flows.precompute import precompute
    from storage.mel_store import StoreError, safe_text, to_json
    from tasks.precompute import PrecomputeError, progress_listener

    if args.dask_address is not None and args.pool != "dask":
        raise UserError("--dask-address needs --pool dask")
    if args.dask_address is not None and args.workers is not None:
        raise UserError("--workers does not apply with --dask-address: the existing "
                        "cluster runs on its own workers")
    mel = {k: getattr(args, k) for k in MEL_ARGS if getattr(args, k) is not None}
    if not os.path.lexists(args.store):  # an existing store keeps (and checks) its own
        check_mel(mel)
    output_dir(args.store, "--store")
    tty = sys.stderr.isatty()

    def show(p: dict[str, Any]) -> None:
        line = (f"precompute: {p['done']}/{p['total']} files, {p['rows']} rows, "
                f"{p['clips_per_s']:.1f} clips/s")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    try:
        with progress_listener(show), quiet_prefect_console():
            summary = precompute(args.data_dir, args.store, mel or None,
                                 batch_size=args.batch_size, workers=args.workers,
                                 device=args.device, pool=args.pool,
                                 compact=COMPACT[args.compact],
                                 dask_address=args.dask_address)
    except (StoreError, PrecomputeError) as exc:
        if tty:
            print(file=sys.stderr)
        raise UserError(safe_text(str(exc))) from None
    if tty:
        print(file=sys.stderr)
    if args.json:
        print(to_json(summary))
    else:
        print(safe_text(format_summary(summary)))
    return 0


def check_mel(mel: dict[str, Any]) -> None:
    """The mel options as a whole, before the flow starts or the store is touched: what
    MelConfig accepts and what the models train on (n_mels, frames), so that a store
    precompute accepts is one `train` accepts too. For a new store: the defaults fill the
    rest; a store that exists keeps its own configuration (the flow refuses another)."""
    from audio_wgan.cli import UserError
    from gan.limits import check_trainable_mel
    from gan.mel_config import MelConfig

    try:
        check_trainable_mel(MelConfig(**mel))
    except (ValueError, TypeError) as exc:
        raise UserError(f"mel configuration refused: {' '.join(str(exc).split())}") from None


@contextlib.contextmanager
def quiet_prefect_console() -> Iterator[None]:
    """Our progress line and one-line errors replace Prefect's console log (the Prefect
    API still receives every log); unexpected errors still raise with a traceback."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    old = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for h, level in zip(handlers, old, strict=True):
            h.setLevel(level)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"precompute: {s['rows']} rows from {s['files']} files in {s['store']} "
        f"({s['added_files']} added, {s['replaced_files']} replaced, {s['removed_files']} "
        f"removed, {s['unchanged_files']} unchanged, {len(s['rejected'])} rejected) "
        f"in {s['seconds']:.1f} s, {s['clips_per_s']:.1f} clips/s",
        "classes: " + ", ".join(f"{c} {n}" for c, n in s["classes"].items()),
    ]
    if s["rejected"]:
        lines.append(f"rejected {len(s['rejected'])} files:")
        lines += [f"  {r['path']}: {r['reason']}" for r in s["rejected"]]
    if s["ignored"]:
        lines.append(f"ignored {len(s['ignored'])} files:")
        lines += [f"  {r['path']}: {r['reason']}" for r in s["ignored"]]
    if s["empty_classes"]:
        lines.append("class folders without usable clips: " + ", ".join(s["empty_classes"]))
    if s["compaction_error"]:
        lines.append(f"not compacted: {s['compaction_error']}")
    if s["compacted_rows"]:
        lines.append(f"compacted: dropped {s['compacted_rows']} rows of replaced or removed "
                     "files")
    lines.append(f"store {'changed' if s['changed'] else 'unchanged'}, "
                 f"fingerprint {s['fingerprint']}")
    return "\n".join(lines)
