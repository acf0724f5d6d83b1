"""Prefect tasks of the precompute flow: scan, open the store, compute + append, finish.

Each task does one job and is testable with `.fn()`. The heavy task runs files through a
thread pool (decode, resample and mel release the GIL), appending and committing one batch
of results while the workers go on with the next files, so memory is bounded by a batch and
the files in flight (both capped in bytes), not the data set, and an interrupted run loses
at most the batch in flight.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from clips.pools import (
    FileJob,
    JobLost,
    SourceMissingOnWorker,
    check_dask_address,
    dask_available,
    default_workers,
    extract_runner,
    resolve_pool,
)
from clips.scan import (
    DataDirError,
    Plan,
    PrecomputeError,
    ScanResult,
    decoder_version,
    plan_changes,
    remembered_rejection,
    scan_data_dir,
)
from gan.limits import SettingError, check_trainable_mel, read_limit_settings
from gan.mel_config import MelConfig
from report.progress import report
from storage.store_backend import backend_for
from storage.store_errors import StoreError
from storage.store_lock import StoreLock
from storage.store_manifest import Manifest, read_manifest
from storage.store_settled import open_settled

if TYPE_CHECKING:
    from clips.outcome import Extracted
    from storage.store_writer import MelStoreWriter

__all__ = [
    "DataDirError", "NoUsableClipsError", "PrecomputeError", "ShrinkRefused", "StoreLock",
    "check_mel", "check_params", "check_shrink",
    "compute_and_append",
    "finalize_store", "publish_summary",
    "raise_if_unusable", "scan_sources", "update_store",
]


# A batch (one append + manifest commit) is `batch_size` files (flows.precompute_params) or
# BATCH_BYTES of rows, whichever comes first: fewer, larger appends cut Zarr's per-call work
# (index chunks rewritten, manifest commits). Files in flight are capped by IN_FLIGHT_BYTES
# of rows (the rows per file are learnt as the run goes), so memory is bounded by these two
# constants, not by the data set, even for long clips that split into many rows.
BATCH_BYTES = 32 << 20
IN_FLIGHT_BYTES = 64 << 20
TAIL_BATCH_BYTES = 2 << 20
MIN_IN_FLIGHT = 4  # per worker
MAX_IN_FLIGHT = 512
MAX_WORKER_DEATHS = 3  # in a row (processes, Dask): beyond that it is not one bad file
# the share of a store's files one run may drop (their clips gone from DATA_DIR) without
# `allow_shrink`: a mistyped, emptied or half-mounted data folder must not cost a store
MAX_SHRINK = 0.5


class NoUsableClipsError(PrecomputeError):
    """Not a single clip could be used."""


class ShrinkRefused(PrecomputeError):
    """The run would drop more of the store than MAX_SHRINK without `allow_shrink`."""


def check_shrink(kept: int, dropping: int, allow_shrink: bool) -> None:
    """Refuse (one line, before anything is written) a run that would drop more than
    MAX_SHRINK of the store's `kept` files, unless the user allowed it."""
    if allow_shrink or not kept or dropping <= MAX_SHRINK * kept:
        return
    raise ShrinkRefused(
        f"this run would drop {dropping} of the store's {kept} files (gone from the data "
        "folder, or no longer decodable); nothing was dropped: check the data folder, or "
        "pass --allow-shrink (allow_shrink) to drop them")


def check_shrink_before_writing(store: str, scan: ScanResult, allow_shrink: bool) -> None:
    """`check_shrink` against the committed manifest before a writer opens the store (its
    opening already writes); the writer checks again under its lock."""
    if allow_shrink:
        return
    try:
        m = read_manifest(store)
    except (StoreError, OSError, ValueError, KeyError, TypeError):
        return  # the writer refuses the store in one line
    if m is not None:
        check_shrink(len(m.files), len(plan_for(m, scan).removed), False)


def _retry_on_oserror(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures only; bad input fails at once with its message."""
    try:
        state.result()
    except OSError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is not transient
        return False
    return False


# ----------------------------------------------------------------- progress
class _Progress:
    """Files done so far, reported (report.progress: the CLI's display, the run's Prefect
    progress artifact) at the start, every half second and at the end."""

    EVERY_S = 0.5

    def __init__(self, total: int) -> None:
        self.total = total
        self.t0 = self.last = time.perf_counter()
        if total:
            report("precompute", 0, total, f"precompute: 0/{total} files")

    def update(self, done: int, rows: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < self.EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        report("precompute", done, self.total,
               f"precompute: {done}/{self.total} files, {rows} rows, {rate:.1f} clips/s",
               rows=rows, clips_per_s=rate)


# ----------------------------------------------------------------- tasks
@task(name="scan-sources", retries=2, retry_delay_seconds=1,
      retry_condition_fn=_retry_on_oserror, cache_policy=NO_CACHE)
def scan_sources(data_dir: str, store: str | None = None) -> ScanResult:
    """Walk DATA_DIR/<class>/** (DataDirError when it does not exist), skipping the store."""
    return scan_data_dir(data_dir, exclude=store)


@task(name="update-store", retries=1, retry_delay_seconds=2,
      retry_condition_fn=_retry_on_oserror, cache_policy=NO_CACHE)
def update_store(store: str, mel: dict[str, Any] | None, scan: ScanResult, data_dir: str,
                 started: float, *, batch_size: int, workers: int | None, device: str,
                 pool: str, dask_address: str | None, compact: bool | None,
                 allow_shrink: bool = False) -> dict[str, Any]:
    """Bring the store up to date with `scan` as its one writer, and return the summary.

    The writer (and the lock or lease it holds) lives inside this task only: it opens or
    creates the store (refusing a changed mel config or a busy store), runs
    `compute_and_append` and `finalize_store`, and closes it, whatever happens. A retry
    (transient I/O errors) opens the store again and goes on from the last committed batch.

    A settled store (`storage.store_settled`) whose kept files, remembered rejections and
    reports the scan leaves as they are is answered from its manifest, under the writer's
    lock, without opening a writer (nor importing Zarr): the scheduled retrain's usual case.

    A store only ever gains or replaces rows through a run that succeeds: files gone from
    DATA_DIR are dropped at the end of a run that found usable clips, never more than
    MAX_SHRINK of the store's files unless `allow_shrink` (`check_shrink`), and a run
    that fails or ends without a usable clip drops nothing.
    """
    settled = open_settled(store, mel)
    if settled is not None:
        manifest, lock = settled
        try:
            summary = unchanged_summary(store, manifest, scan, data_dir, started,
                                        workers=workers, device=device, pool=pool,
                                        compact=compact)
        finally:
            lock.release()
        if summary is not None:
            return summary
    check_shrink_before_writing(store, scan, allow_shrink)
    from storage.store_writer import MelStoreWriter  # Zarr and numpy: a store to write

    writer = MelStoreWriter.create_or_open(store, mel)
    try:
        result = compute_and_append(writer, scan, batch_size=batch_size, workers=workers,
                                    device=device, pool=pool, dask_address=dask_address,
                                    allow_shrink=allow_shrink)
        return finalize_store(writer, result, data_dir, started, compact=compact)
    finally:
        writer.close()


@dataclass
class ComputeResult:
    plan: Plan
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)  # same content, new size/mtime stat
    removed: list[str] = field(default_factory=list)
    # kept files to drop at the end of a run that succeeds: rejected now, or vanished
    dropping: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    new_rows: int = 0
    processed: int = 0  # files read (hashed, and decoded unless unchanged)
    seconds: float = 0.0
    workers: int = 1
    device: str = "cpu"
    pool: str = "auto"


def plan_for(manifest: Manifest, scan: ScanResult) -> Plan:
    """What the scan leaves to do against the committed manifest (soundfile, for its
    version, is imported only when the manifest remembers rejections)."""
    rejections = manifest.known_rejections()
    return plan_changes(scan, manifest.known_files(), rejections,
                        decoder_version() if rejections else "")


def compute_and_append(writer: MelStoreWriter, scan: ScanResult, *, batch_size: int,
                       workers: int | None, device: str, pool: str,
                       dask_address: str | None, allow_shrink: bool = False
                       ) -> ComputeResult:
    """Diff the scan against the manifest (new, changed by size/mtime, unchanged, removed),
    then decode + resample + mel every file to do, appending and committing per batch
    (`batch_size` files or BATCH_BYTES of rows, whichever comes first). Files run on
    `workers` threads or worker processes, or on a Dask cluster (`pool`, see
    clips.pools; `dask_address`: an existing one); the mel runs on `device`
    ("auto": the GPU when CUDA has one).

    Files gone from DATA_DIR, and kept files that are now rejected or vanished, are
    dropped only at the end (`_drop_at_end`), so that a run that fails midway or ends with
    no usable clip never costs the store a row."""
    workers = int(workers or default_workers())
    t0 = time.perf_counter()
    plan = plan_for(writer.manifest, scan)
    kept_at_start = len(writer.manifest.files)
    check_shrink(kept_at_start, len(plan.removed), allow_shrink)
    res = ComputeResult(plan=plan, workers=workers, device=device, pool=pool)
    if not plan.todo:  # nothing to read: no device, no pool, and torch is never imported
        _drop_at_end(writer, res, kept_at_start, allow_shrink)
        writer.commit()
        res.seconds = time.perf_counter() - t0
        return res
    res.device = dev = _device(device)
    res.pool = pool = resolve_pool(pool, len(plan.todo), workers, dev.partition(":")[0])
    todo = (_file_job(f, plan) for f in plan.todo)
    progress = _Progress(len(plan.todo))
    # (future, its files, run alone?): a job run alone that kills its worker names the file
    jobs: deque[tuple[Future[list[Extracted]], list[FileJob], bool]] = deque()
    suspects: deque[FileJob] = deque()  # in flight when a worker died: re-run one by one
    deaths = 0  # workers lost in a row
    batch: list[Extracted] = []
    batch_bytes = done_bytes = done_files = in_flight = 0
    total = len(plan.todo)
    with extract_runner(pool, writer.mel_config, dev, workers, dask_address) as runner:
        res.workers = workers = runner.workers  # an existing Dask cluster has its own

        def cap_now() -> int:
            # files in flight: enough to keep every worker busy while a batch is written,
            # few enough that their rows stay within IN_FLIGHT_BYTES (per-file size learnt)
            per_file = done_bytes / done_files if done_files else 0
            cap = int(IN_FLIGHT_BYTES // per_file) if per_file else 4 * MIN_IN_FLIGHT * workers
            least = max(MIN_IN_FLIGHT, 2 * runner.files_per_job) * workers  # 2 jobs each
            return min(max(least, cap), MAX_IN_FLIGHT)

        def refill() -> None:
            nonlocal in_flight
            if suspects:  # one at a time, so that a death points at its file
                if not jobs:
                    job = [suspects.popleft()]
                    jobs.append((runner.submit(job), job, True))
                    in_flight += 1
                return
            cap = cap_now()
            while in_flight < cap:
                job = list(itertools.islice(todo, runner.files_per_job))
                if not job:
                    return
                jobs.append((runner.submit(job), job, False))
                in_flight += len(job)

        refill()
        while jobs:
            future, job, alone = jobs.popleft()
            in_flight -= len(job)
            try:
                outs = runner.result(future)
                deaths = 0
            except SourceMissingOnWorker:
                writer.commit()  # the rows appended so far are whole: keep them
                raise
            except JobLost:
                deaths += 1
                if deaths > MAX_WORKER_DEATHS:
                    writer.commit()  # the rows appended so far are whole: keep them
                    raise PrecomputeError(
                        f"{runner.noun} keep dying (killed or out of memory?) after "
                        f"{res.processed} files, which are kept; re-run to go on, or use "
                        f"--pool threads") from None
                # every job in flight is run again, one file at a time and in order, so
                # that a death names its file (with processes they all failed with the
                # pool; on Dask a worker's death also counts against the jobs queued on it
                # beside the culprit), and outcomes keep the order of the other pools
                lost = [] if alone else list(job)
                for other_future, other, _ in jobs:
                    other_future.cancel()
                    lost += other
                jobs.clear()
                suspects.extendleft(reversed(lost))
                in_flight = 0  # lost files are counted again when resubmitted
                runner.restart()
                if not alone:
                    refill()
                    continue
                outs = [_worker_died(job[0])]
            for i, out in enumerate(outs):
                nbytes = out.mels.nbytes if out.mels is not None else 0
                batch.append(out)
                batch_bytes += nbytes
                done_bytes += nbytes
                done_files += 1
                if i == len(outs) - 1:
                    refill()  # with the rows per file learnt so far
                last = not jobs and not suspects and i == len(outs) - 1
                # near the end, write as soon as the batch holds as much as is still to
                # come: batches shrink geometrically, and little is left to write
                # (serially, while the workers idle) once the last file is done
                to_come = (total - done_files) * done_bytes / done_files  # in flight + unsent
                tail = batch_bytes >= max(TAIL_BATCH_BYTES, to_come)
                if len(batch) >= batch_size or batch_bytes >= BATCH_BYTES or tail or last:
                    _apply(writer, batch, res)
                    writer.commit(force=False)
                    res.processed += len(batch)
                    batch, batch_bytes = [], 0
                    progress.update(res.processed, writer.live_rows(), final=last)
    _drop_at_end(writer, res, kept_at_start, allow_shrink)
    writer.commit()
    res.seconds = time.perf_counter() - t0
    return res


def _drop_at_end(writer: MelStoreWriter, res: ComputeResult, kept_at_start: int,
                 allow_shrink: bool) -> None:
    """Stop serving the files gone from DATA_DIR and the kept ones whose bytes are now
    rejected, within `check_shrink` of the files kept when the run began, and unless that
    would leave the store without a row: then the run fails and drops nothing."""
    files = writer.manifest.files
    drop = [p for p in dict.fromkeys([*res.plan.removed, *res.dropping]) if p in files]
    if drop and files and sum(files[p].n_rows for p in drop) >= writer.live_rows():
        raise NoUsableClipsError(
            f"no usable clip left: this run would drop all {len(drop)} files of the store "
            f"({drop[0]}, ...); nothing was dropped")
    check_shrink(kept_at_start, len(drop), allow_shrink)
    for path in drop:
        if writer.remove([path]):
            res.removed.append(path)


def _file_job(f: Any, plan: Plan) -> FileJob:
    return (f.abs_path, f.path, f.class_name, f.size, f.mtime_ns, plan.known_hash.get(f.path))


def _worker_died(job: FileJob) -> Extracted:
    """The outcome of a file whose decoding killed the worker process running it alone."""
    from clips.outcome import Extracted

    _, path, class_name, size, mtime_ns, _ = job
    return Extracted(path=path, class_name=class_name, size=size, mtime_ns=mtime_ns,
                     status="rejected", reason="the worker process died while decoding it "
                     "(a crash in the decoder?)")


def _device(name: str) -> str:
    """The device the mel runs on, as torch names it ("cpu", "cuda", "cuda:1"). torch is
    imported only where it must decide (gan.devices.device_name): worker processes import
    their own, so the writing process need not."""
    from gan.devices import device_name, resolve_device

    known = device_name(name)
    if known is not None:
        return known
    try:
        return str(resolve_device(name))
    except ValueError as exc:
        raise PrecomputeError(str(exc)) from None


def _apply(writer: MelStoreWriter, outcomes: list[Extracted], res: ComputeResult) -> None:
    kept = writer.manifest.files
    from storage.store_writer import NewFile

    new: list[NewFile] = []
    for o in outcomes:
        if o.status == "new":
            (res.replaced if o.path in kept else res.added).append(o.path)
            new.append(NewFile(path=o.path, class_name=o.class_name, hash=o.hash, size=o.size,
                               mtime_ns=o.mtime_ns, mels=o.mels, offsets=o.offsets,
                               sums=o.sums, sample_rate=o.sample_rate, channels=o.channels,
                               samples=o.samples))
        elif o.status == "same":
            writer.touch(o.path, o.size, o.mtime_ns)
            res.touched.append(o.path)
        elif o.status == "rejected":
            res.rejected.append(remembered_rejection(o.path, o.reason, o.size, o.mtime_ns,
                                                     decoder_version(), o.by_content))
            # a kept file whose own bytes went bad stops being served (at the end); one
            # that failed for another reason (I/O, a limit setting) keeps its rows
            if o.path in kept and o.by_content:
                res.dropping.append(o.path)
        elif o.status == "vanished" and o.path in kept:
            res.dropping.append(o.path)
    res.new_rows += writer.append(new)


def finalize_store(writer: MelStoreWriter, result: ComputeResult, data_dir: str,
                   started: float, compact: bool | None = None) -> dict[str, Any]:
    """Record rejected/ignored files, trim, statistics, attributes, compaction (`compact`:
    None = once dead rows are worth it, see MelStoreWriter.should_compact); build the
    summary. A store this run created that ends up without a single row is removed again.
    """
    scan = result.plan.scan
    rejected, empty = _reports(writer.manifest, result)
    writer.set_reports(rejected, scan.ignored, empty, scan.linked_classes)
    fin = writer.finalize(compact=compact)
    summary = _summary(str(writer.path), writer.manifest, result, rejected, empty, fin,
                       fin["fingerprint"] != writer.fingerprint_at_open, data_dir, started)
    if fin["rows"] == 0 and writer.created:
        writer.destroy()
        summary["store_removed"] = True
    return summary


def unchanged_summary(store: str, manifest: Manifest, scan: ScanResult, data_dir: str,
                      started: float, *, workers: int | None, device: str, pool: str,
                      compact: bool | None) -> dict[str, Any] | None:
    """`finalize_store`'s summary of a settled store (its committed `manifest`) that the
    scan leaves as it is; None when a writer has something to do: a file to read or drop,
    a report to change, dead rows that compaction may take."""
    t0 = time.perf_counter()
    m = manifest
    plan = plan_for(m, scan)
    if plan.todo or plan.removed or (compact is not False and m.rows != m.live_rows()):
        return None
    result = ComputeResult(plan=plan, workers=int(workers or default_workers()),
                           device=device, pool=pool)
    rejected, empty = _reports(m, result)
    if (rejected, scan.ignored, empty, scan.linked_classes) != (
            m.rejected, m.ignored, m.empty_classes, m.linked_classes):
        return None
    result.seconds = time.perf_counter() - t0
    fin = {"fingerprint": m.fingerprint(), "rows": m.live_rows(), "stored_rows": m.rows,
           "compacted_rows": 0, "compaction_error": ""}
    return _summary(str(backend_for(store).path), m, result, rejected, empty, fin, False,
                    data_dir, started)


def _reports(manifest: Manifest, result: ComputeResult
             ) -> tuple[list[dict[str, Any]], list[str]]:
    """(rejected files, empty class folders) as the manifest records them after a run."""
    plan = result.plan
    scan = plan.scan
    rejected = sorted(scan.unreadable + result.rejected + plan.kept_rejected,
                      key=lambda r: r["path"])
    kept_classes = {p.split("/", 1)[0] for p in manifest.files}
    return rejected, [c for c in scan.class_dirs if c not in kept_classes]


def _summary(store: str, m: Manifest, result: ComputeResult, rejected: list[dict[str, Any]],
             empty: list[str], fin: dict[str, Any], changed: bool, data_dir: str,
             started: float) -> dict[str, Any]:
    plan = result.plan
    scan = plan.scan
    per_label = [0] * len(m.classes)
    for e in m.files.values():
        per_label[e.label] += e.n_rows
    seconds = time.time() - started
    return {
        "store": store,
        "data_dir": str(data_dir),
        "rows": fin["rows"],
        "stored_rows": fin["stored_rows"],
        "compacted_rows": fin["compacted_rows"],
        "compaction_error": fin["compaction_error"],
        "files": len(m.files),
        "added_files": len(result.added),
        "replaced_files": len(result.replaced),
        "removed_files": len(result.removed),
        "removed": sorted(result.removed),  # the scan found them gone, or now rejected
        "unchanged_files": len(plan.unchanged) + len(result.touched),
        "processed_files": result.processed,
        "new_rows": result.new_rows,
        "rejected": [{"path": r["path"], "reason": r["reason"]} for r in rejected],
        "ignored": scan.ignored,
        "empty_classes": empty,
        "linked_classes": scan.linked_classes,
        "classes": dict(zip(m.classes, per_label, strict=True)),
        "changed": changed,
        "fingerprint": fin["fingerprint"],
        "mel": m.mel_config.to_dict(),
        "workers": result.workers,
        "device": result.device,
        "pool": result.pool,
        "seconds": round(seconds, 3),
        "compute_seconds": round(result.seconds, 3),
        "clips_per_s": round(result.processed / seconds, 2) if seconds > 0 else 0.0,
    }


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: dict[str, Any]) -> None:
    """Prefect table artifacts: per-class counts, rejected files, throughput."""
    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = None
    classes = [{"label": i, "class": c, "rows": n}
               for i, (c, n) in enumerate(summary["classes"].items())]
    create_table_artifact(classes or [{"label": "", "class": "(none)", "rows": 0}],
                          key="precompute-classes",
                          description=f"Rows per class in {summary['store']}")
    rejected = summary["rejected"] or [{"path": "(none)", "reason": ""}]
    create_table_artifact(rejected, key="precompute-rejected",
                          description=f"{len(summary['rejected'])} rejected files")
    keys = ("rows", "files", "added_files", "replaced_files", "removed_files",
            "unchanged_files", "processed_files", "new_rows", "compacted_rows", "changed",
            "seconds",
            "clips_per_s", "workers", "pool", "device", "fingerprint")
    create_table_artifact([{"metric": k, "value": str(summary[k])} for k in keys],
                          key="precompute-summary", description="precompute run summary")
    if logger is not None and summary["compaction_error"]:
        logger.warning("precompute: %s", summary["compaction_error"])
    if logger is not None:
        logger.info("precompute: %d rows from %d files (%d added, %d replaced, %d removed, "
                    "%d rejected) in %.1f s", summary["rows"], summary["files"],
                    summary["added_files"], summary["replaced_files"],
                    summary["removed_files"], len(summary["rejected"]), summary["seconds"])


def check_params(pool: str, dask_address: str | None, device: str) -> None:
    """What the flow's parameters ask of this machine, before anything is touched (one-line
    PrecomputeError; flows.precompute_params.PrecomputeParams checked each on its own): the
    Dask extra for pool "dask", a scheduler that answers, a device torch has."""
    try:  # the read limits every worker applies (gan.limits.read_limit_settings)
        read_limit_settings()
    except SettingError as exc:
        raise PrecomputeError(str(exc)) from None
    if pool == "dask" and not dask_available():
        raise PrecomputeError("pool 'dask' needs the scale extra: "
                              "pip install 'audio-wgan[scale]'")
    if dask_address is not None:
        check_dask_address(dask_address)
    if str(device) not in ("cpu", "auto"):  # always valid; checking others needs torch
        _device(device)


def check_mel(mel: dict[str, Any] | None) -> None:
    """Refuse, before the store is touched, a mel configuration that no model trains on
    (one-line PrecomputeError): the flow's callers (CLI, deployments) get the same check."""
    if mel is None:
        return
    try:
        check_trainable_mel(MelConfig(**mel))
    except (ValueError, TypeError) as exc:
        raise PrecomputeError(f"mel configuration refused: {' '.join(str(exc).split())}"
                              ) from None


def raise_if_unusable(summary: dict[str, Any]) -> None:
    """The run fails (one line) only when no usable clip remains."""
    if summary["rows"] == 0:
        rej = summary["rejected"]
        if rej:
            raise NoUsableClipsError(
                f"no usable clip in {summary['data_dir']}: {len(rej)} file(s) rejected "
                f"(e.g. {rej[0]['path']}: {rej[0]['reason']})")
        raise NoUsableClipsError(f"no usable clip in {summary['data_dir']}: expected audio "
                                 "files in DATA_DIR/<class>/ folders")
