"""The precompute flow's parameters, declared once (`PrecomputeParams`): the flow takes them,
the CLI's `precompute` options and prefect.yaml's precompute deployment are checked against
them (tests/test_precompute_params.py), and the tasks take every knob from the flow.

What needs the machine (is the Dask extra installed, does the scheduler answer, does this
CUDA device exist) is checked by `tasks.precompute.check_params`; the mel configuration as
a whole by `tasks.precompute.check_mel`.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clips.scan import PrecomputeError
from gan.errors import invalid_parameter
from gan.limits import BATCH_FILES, POOLS, WORKERS

DEFAULT_BATCH_FILES = 256  # files per append + commit (also capped by bytes: tasks.precompute)


class PrecomputeParams(BaseModel):
    """The flow's parameters, checked before anything is touched (a bad one -> one line)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(min_length=1)
    store: str = Field(min_length=1)
    # MelConfig fields for a new store; an existing store keeps (and checks) its own
    mel: dict[str, Any] | None = None
    batch_size: int = Field(DEFAULT_BATCH_FILES, ge=BATCH_FILES.lo, le=BATCH_FILES.hi)
    # threads or worker processes (None: one per core); not with an existing Dask cluster
    workers: int | None = Field(None, ge=WORKERS.lo, le=WORKERS.hi)
    device: str = "auto"  # auto, cpu, cuda, cuda:N (checked against this machine's torch)
    pool: str = "auto"  # one of gan.limits.POOLS
    # drop dead rows: True, False, or None (once they are a quarter of the store)
    compact: bool | None = None
    # drop more than tasks.precompute.MAX_SHRINK of the store's files in one run (their
    # clips gone from DATA_DIR); refused otherwise, so a wrong folder cannot empty a store
    allow_shrink: bool = False
    # the scheduler of an existing Dask cluster (pool "dask"), e.g. tcp://host:8786
    dask_address: str | None = None

    @field_validator("pool")
    @classmethod
    def _known_pool(cls, v: str) -> str:
        if v not in POOLS:
            raise ValueError(f"must be one of {', '.join(POOLS)}, not {v!r}")
        return v

    @model_validator(mode="after")
    def _dask_address_needs_dask(self) -> PrecomputeParams:
        if self.dask_address is not None:
            if self.pool != "dask":
                raise ValueError(f"dask_address needs pool 'dask', not {self.pool!r}")
            if self.workers is not None:
                raise ValueError("workers does not apply to an existing Dask cluster "
                                 "(dask_address): it runs on the cluster's own workers")
        return self


def validate_params(values: dict[str, Any]) -> PrecomputeParams:
    """PrecomputeParams or a one-line PrecomputeError naming the first bad parameter."""
    try:
        return PrecomputeParams(**values)
    except ValidationError as exc:
        raise PrecomputeError(invalid_parameter(exc)) from None
