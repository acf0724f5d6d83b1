"""`audio-wgan precompute DATA_DIR --store STORE`: run the precompute flow."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import choice, option, output_dir, ranged
from gan.limits import BATCH_FILES, POOLS, WORKERS
from gan.mel_config import LONG_CLIP_POLICIES, PAD_POLICIES, TAIL_POLICIES

MEL = "mel configuration of a new store: "  # the command help says the defaults
COMPACT = {"auto": None, "always": True, "never": False}  # --compact -> the flow's compact


def register(app: typer.Typer) -> None:
    app.command(
        "precompute",
        short_help="compute log-mels of DATA_DIR/<class>/* clips into a Zarr store "
        "(incremental)",
        help="Scan DATA_DIR/<class>/** for audio (wav, flac, ogg, mp3, ...), decode, downmix, "
        "resample, compute log-mels and append them to the Zarr store STORE. Re-running only "
        "processes new or changed files. Bad files are rejected with a reason (see "
        "store-info), never fatal. Mel options (--sample-rate ... --pad-policy) apply to a "
        "new store (defaults: the seed's 128x256 log-mels at 22.05 kHz); an existing store "
        "keeps its configuration and refuses a different one.",
    )(command)


def command(
    data_dir: Annotated[str, typer.Argument(metavar="DATA_DIR", show_default=False)],
    store: Annotated[str, option("--store", metavar="STORE", show_default=False,
                                 help="Zarr store directory")],
    sample_rate: Annotated[int | None, option("--sample-rate", metavar="HZ",
                                              help=MEL + "sample rate")] = None,
    n_fft: Annotated[int | None, option("--n-fft", metavar="N", help=MEL + "FFT size")
                     ] = None,
    hop_length: Annotated[int | None, option("--hop-length", metavar="N",
                                             help=MEL + "STFT hop")] = None,
    n_mels: Annotated[int | None, option("--n-mels", metavar="N", help=MEL + "mel bands")
                      ] = None,
    frames: Annotated[int | None, option("--frames", metavar="N",
                                         help=MEL + "frames per example")] = None,
    f_min: Annotated[float | None, option("--f-min", metavar="HZ",
                                          help=MEL + "lowest mel frequency")] = None,
    f_max: Annotated[float | None, option("--f-max", metavar="HZ",
                                          help=MEL + "highest mel frequency")] = None,
    long_clip_policy: Annotated[str | None, option(
        "--long-clip", **choice(*LONG_CLIP_POLICIES),
        help=MEL + "clips longer than one example: split into several or crop")] = None,
    split_hop_frames: Annotated[int | None, option(
        "--split-hop-frames", metavar="N",
        help=MEL + "hop between split examples (default: one example, no overlap)")] = None,
    tail_policy: Annotated[str | None, option(
        "--tail-policy", **choice(*TAIL_POLICIES),
        help=MEL + "the last example of a split clip: end-grid (default; it ends within one "
        "hop of the clip's end, on the frame grid of the one before, whose frames it "
        "shares), end (exactly at the clip's end, as stores made before end-grid) or pad "
        "(zero-padded remainder, as stores made before end)")] = None,
    pad_policy: Annotated[str | None, option(
        "--pad-policy", **choice(*PAD_POLICIES),
        help=MEL + "clips shorter than one example: noise (default; padded with the clip's "
        "own noise floor), loop (repeated) or zero-end (zero-padded)")] = None,
    workers: Annotated[int | None, option(
        "--workers", parser=ranged(WORKERS, "--workers"), metavar="N",
        help=f"threads or worker processes, 1..{WORKERS.hi} (default: one per core)")] = None,
    pool: Annotated[str, option(
        "--pool", **choice(*POOLS),
        help="run files on threads (no start-up cost), on worker processes (free of the "
        "GIL; they take ~2-3 s to start, so for large jobs), auto (default: processes for "
        "5,000 files or more on the CPU, else threads) or on a Dask cluster (a local one of "
        "--workers processes, or --dask-address; needs audio-wgan[scale])")] = "auto",
    dask_address: Annotated[str | None, option(
        "--dask-address", metavar="URL",
        help="with --pool dask: the scheduler of an existing Dask cluster, e.g. "
        "tcp://host:8786 (its workers must see DATA_DIR at the same path)")] = None,
    device: Annotated[str, option(
        "--device", metavar="DEV", help="where the mel runs: auto (a CUDA GPU when present), "
        "cpu, cuda, cuda:N (default auto)")] = "auto",
    batch_size: Annotated[int, option(
        "--batch-size", parser=ranged(BATCH_FILES, "--batch-size"), metavar="N",
        help=f"files per write batch, 1..{BATCH_FILES.hi}, at most 32 MB of rows (default "
        "256)")] = 256,
    compact: Annotated[str, option(
        "--compact", **choice(*COMPACT),
        help="drop the rows of replaced or deleted files by rewriting the live ones: auto "
        "(once they are a quarter of the store and fill a chunk), always, never (default "
        "auto; see also `audio-wgan compact`)")] = "auto",
    allow_shrink: Annotated[bool, option(
        "--allow-shrink", help="let this run drop more than half of the store's files "
        "(their clips are gone from DATA_DIR); without it such a run is refused and writes "
        "nothing, so a mistyped or half-mounted folder cannot empty a store")] = False,
    as_json: Annotated[bool, option("--json", help="print the summary as JSON")] = False,
) -> int:
    params = dict(locals())
    params["json"] = params.pop("as_json")
    return dispatch("precompute", run, params, prepare=warm_up)


def warm_up(args: SimpleNamespace, waits: bool) -> None:
    """While the command waits for its Prefect server: start the worker processes'
    forkserver (it imports torch) if this run may use them."""
    if waits:
        from clips.pools import warm_worker_processes

        warm_worker_processes(args.pool, args.workers, args.device)


MEL_ARGS = ("sample_rate", "n_fft", "hop_length", "n_mels", "frames", "f_min", "f_max",
            "long_clip_policy", "split_hop_frames", "tail_policy", "pad_policy")


def run(args: SimpleNamespace) -> int:
    # a temporary Prefect server started for this run has nowhere to send telemetry
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from audio_wgan.command import UserError
    from audio_wgan.progress_display import shown
    from flows.precompute import precompute
    from storage.store_errors import StoreError
    from storage.store_summary import safe_text, to_json
    from tasks.precompute import PrecomputeError

    if args.dask_address is not None and args.pool != "dask":
        raise UserError("--dask-address needs --pool dask")
    if args.dask_address is not None and args.workers is not None:
        raise UserError("--workers does not apply with --dask-address: the existing "
                        "cluster runs on its own workers")
    mel = {k: getattr(args, k) for k in MEL_ARGS if getattr(args, k) is not None}
    if not os.path.lexists(args.store):  # an existing store keeps (and checks) its own
        check_mel(mel)
    output_dir(args.store, "--store")
    try:
        with shown(lines=sys.stderr), quiet_prefect_console():
            summary = precompute(args.data_dir, args.store, mel or None,
                                 batch_size=args.batch_size, workers=args.workers,
                                 device=args.device, pool=args.pool,
                                 compact=COMPACT[args.compact],
                                 dask_address=args.dask_address,
                                 allow_shrink=args.allow_shrink)
    except (StoreError, PrecomputeError) as exc:
        raise UserError(safe_text(str(exc))) from None
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
    from audio_wgan.command import UserError
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
    if s["removed"]:
        shown = s["removed"][:20]
        more = f" and {len(s['removed']) - 20} more" if len(s["removed"]) > 20 else ""
        lines.append(f"dropped {len(s['removed'])} files gone from {s['data_dir']}: "
                     + ", ".join(shown) + more)
    lines.append(f"store {'changed' if s['changed'] else 'unchanged'}, "
                 f"fingerprint {s['fingerprint']}")
    return "\n".join(lines)
