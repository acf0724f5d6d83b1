"""Prefect flow `precompute`: a folder of labelled clips -> the Zarr log-mel store.

Wiring only; the work is in `tasks.precompute`. Incremental and idempotent: unchanged
files are skipped, new ones appended, changed ones replaced, deleted ones dropped.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

import flows  # noqa: F401 - the package applies flows.prefect_heartbeat (worker entrypoint)
from flows.precompute_params import DEFAULT_BATCH_FILES, validate_params
from tasks.precompute import (
    check_mel,
    check_params,
    publish_summary,
    raise_if_unusable,
    scan_sources,
    update_store,
)


@flow(name="precompute", validate_parameters=False)
def precompute(data_dir: str, store: str, mel: dict[str, Any] | None = None,
               batch_size: int = DEFAULT_BATCH_FILES, workers: int | None = None,
               device: str = "auto", pool: str = "auto",
               compact: bool | None = None, dask_address: str | None = None,
               allow_shrink: bool = False) -> dict[str, Any]:
    """Scan DATA_DIR/<class>/**, compute log-mels of new/changed clips, update STORE.

    The parameters are `flows.precompute_params.PrecomputeParams` (checked first; a bad one
    fails the run in one line before anything is touched). `mel` overrides MelConfig fields
    (a new store starts from the defaults; an existing store keeps its own and refuses
    changes). `workers` threads or, with `pool="processes"`, worker processes (default: all
    cores; processes pay off on large sets of short clips); `pool="dask"`: a Dask
    LocalCluster of `workers` processes, or the existing cluster whose scheduler is
    `dask_address` (tcp://host:8786; DATA_DIR at the same path on its workers); rows come
    back to this flow's one store writer. The mel runs on `device` ("auto": the GPU when
    CUDA has one, else the CPU). Rows of replaced or deleted files are dropped by
    compaction when `compact` is True, or, when None, once they are a quarter of the store
    and at least one chunk. A run drops the rows of files gone from DATA_DIR only when it
    succeeds, and never more than half of the store's files unless `allow_shrink`.
    Returns the run summary.
    """
    started = time.time()
    p = validate_params({k: v for k, v in locals().items() if k != "started"}
                        | {"data_dir": str(data_dir), "store": str(store)})
    check_params(p.pool, p.dask_address, p.device)
    check_mel(p.mel)
    scan = scan_sources(p.data_dir, p.store)
    # quote(): file lists can be long; Prefect need not walk them looking for futures
    summary = update_store(p.store, p.mel, quote(scan), p.data_dir, started,
                           batch_size=p.batch_size, workers=p.workers, device=p.device,
                           pool=p.pool, dask_address=p.dask_address, compact=p.compact,
                           allow_shrink=p.allow_shrink)
    publish_summary(quote(summary))
    raise_if_unusable(summary)
    return summary
