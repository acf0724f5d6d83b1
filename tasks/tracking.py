"""MLflow run tracking for the training flow: one MLflow run per Prefect flow run.

The run is driven through `MlflowClient` with an explicit run id (not the fluent "active
run", which is thread-local and would tie the run to whichever thread a task runs on).
Per-step metrics are buffered and sent with `log_batch`, so logging costs one request
per few hundred values instead of one per value.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage import registry

# MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags per request
_MAX_METRICS, _MAX_PARAMS = 1000, 100


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the project checkout, or "unknown" (no git, not a checkout)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prefect_tags() -> dict[str, str]:
    """Which Prefect flow run / deployment this is (empty values outside Prefect)."""
    from prefect.runtime import deployment, flow_run

    tags = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.deployment": str(deployment.name or ""),
    }
    return {k: v for k, v in tags.items() if v}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


def run_name(kind: str, preset: str, store: str) -> str:
    """A name a person can tell apart: what ran, on which store, when (UTC), plus four
    random hex digits. MLflow's own generated names repeat when a run seeds Python's
    `random` (every fresh training run with seed 0 got the same one)."""
    import secrets
    import time

    store_name = str(store).rstrip("/").rsplit("/", 1)[-1] or "store"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{kind}-{preset}-{store_name}-{stamp}-{secrets.token_hex(2)}"


def start_run(experiment: str, params: Mapping[str, Any], tags: Mapping[str, Any],
              run_name: str | None = None) -> str:
    """Create the run with params and tags (Prefect ids + git commit added); return its id."""
    client = registry.client()
    exp_id = registry.ensure_experiment(experiment)
    all_tags = {"git_commit": git_commit(), **prefect_tags(),
                **{k: str(v) for k, v in tags.items()}}
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    flat = sorted(flatten(params).items())
    for i in range(0, len(flat), _MAX_PARAMS):
        client.log_batch(run.info.run_id,
                         params=[Param(k, v) for k, v in flat[i:i + _MAX_PARAMS]])
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """FINISHED / FAILED / KILLED; harmless when the run has already ended."""
    registry.client().set_terminated(run_id, status=status)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    if items:
        registry.client().log_batch(run_id, tags=items)


class MetricBatcher:
    """Buffers metrics and sends them with `log_batch` every `flush_every` values."""

    def __init__(self, run_id: str, flush_every: int = 500) -> None:
        self.run_id = run_id
        self.flush_every = min(flush_every, _MAX_METRICS)
        self.client = registry.client()
        self._buf: list[Metric] = []

    def log(self, metrics: Mapping[str, float], step: int, prefix: str = "") -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if k == "step":  # the step is the x axis, not a metric
                continue
            self._buf.append(Metric(f"{prefix}{k}", float(v), ts, int(step)))
        if len(self._buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buf:
            chunk, self._buf = self._buf[:_MAX_METRICS], self._buf[_MAX_METRICS:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def __enter__(self) -> MetricBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def start_system_metrics(run_id: str) -> Any | None:
    """CPU/GPU/memory sampling into the run when psutil is installed (optional); the
    returned monitor's `finish()` stops it."""
    try:
        import psutil  # noqa: F401
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=True,
                                       tracking_uri=registry.tracking_uri())
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 - monitoring must never break training
        return None


def log_dict(run_id: str, value: Mapping[str, Any], artifact_file: str) -> None:
    """A small JSON document as an artifact of the run."""
    registry.client().log_dict(run_id, dict(value), artifact_file)


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    registry.client().log_artifacts(run_id, str(local_dir), artifact_path)


def log_samples(run_id: str, samples_dir: str | Path) -> None:
    """A rendered gallery (plots, wavs, index.html) as the run's `samples/` artifacts."""
    if Path(samples_dir).is_dir():
        log_artifacts(run_id, samples_dir, "samples")


# --- Prefect task wrappers (each one job; the plain functions above stay testable) ---------

start_run_task = task(start_run, name="start-mlflow-run", cache_policy=NO_CACHE)
end_run_task = task(end_run, name="end-mlflow-run", cache_policy=NO_CACHE)
log_samples_task = task(log_samples, name="log-samples", cache_policy=NO_CACHE)
