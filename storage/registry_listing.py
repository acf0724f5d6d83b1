"""`audio-wgan models` without importing MLflow: the registered versions of a model, read
straight from the SQLite database of the embedded default registry.

`import mlflow` and its SQLAlchemy store take ~4 s here, most of a `models` call that only
lists a few rows. For a `sqlite:///` registry whose schema this reader knows, and the
default workspace, it answers from five read-only queries with the same rows as
`storage.registry.list_versions`; for any other registry (a tracking server, PostgreSQL,
a schema without the tables and columns below) `read_versions` returns None and the caller
asks MLflow. The database is opened read-only (`mode=ro`), so a look never migrates,
creates or locks it for writing.

The schema is recognised by what the reader uses (`READ_COLUMNS`), not by MLflow's alembic
revision: MLflow migrates its schema in most releases (3.18.0 went from `dc11669786a5` to
`f4a9b2c7d1e6` through three migrations, none touching these tables), and a revision list
turned every such release into a silent fall-back to the slow path. `tests/test_registry_listing.py`
proves against the MLflow installed that the rows equal MLflow's own client's, so a release
that changes what these columns mean is caught by `make test-latest` before users meet it.
"""

from __future__ import annotations

import math
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# the tables and columns of MLflow's SQL store that the reader queries: a registry whose
# schema lacks any of them is left to MLflow
READ_COLUMNS: dict[str, frozenset[str]] = {
    "registered_models": frozenset({"workspace", "name"}),
    "registered_model_aliases": frozenset({"workspace", "name", "alias", "version"}),
    "model_version_tags": frozenset({"workspace", "name", "version", "key", "value"}),
    "model_versions": frozenset({"workspace", "name", "version", "run_id", "creation_time",
                                 "status", "current_stage"}),
    "latest_metrics": frozenset({"run_uuid", "key", "value", "is_nan"}),
}
# run metrics shown by `models` / list_versions (when present on the source run)
KEY_METRICS = ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein",
               "samples_per_s", "epoch")
STAGE_DELETED_INTERNAL = "Deleted_Internal"  # MLflow's mark of a deleted version
DEFAULT_WORKSPACE = "default"


class RegistryError(ValueError):
    """A registry request that cannot be served (one-line message)."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other URI)."""
    u = urlparse(uri)
    if u.scheme != "sqlite" or u.query or u.netloc:
        return None
    path = unquote(u.path)
    return Path(path[1:] if path.startswith("//") else path) if path else None


# an MLflow tracking server that does not answer its health check within this is reported
# at once (MLflow's own retries take minutes, then name another cause)
SERVER_CHECK_TIMEOUT_S = 10.0


def tracking_store_problem(uri: str) -> str:
    """Why MLflow must not be pointed at `uri` ("" when it may): a `sqlite:` file that
    exists but is not an MLflow database (MLflow would write its tables into someone
    else's file), or an http(s) tracking server that does not answer its health check."""
    u = urlparse(uri)
    if u.scheme == "sqlite" and not u.netloc:
        return _foreign_sqlite(sqlite_path(uri.split("?", 1)[0]))
    if u.scheme in ("http", "https"):
        return _server_problem(uri.rstrip("/"))
    return ""


def _foreign_sqlite(path: Path | None) -> str:
    if path is None or not os.path.lexists(path):
        return ""
    if not path.is_file():
        return f"{path} is not a file, so not an MLflow database"
    if path.stat().st_size == 0:
        return ""  # MLflow makes its tables in an empty file
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return f"{path} is not a SQLite database, so not an MLflow one; refusing to use it"
    if tables and not {"alembic_version", "experiments"} <= tables:
        return (f"{path} is a SQLite database MLflow did not create; refusing to write "
                "MLflow's tables into it")
    return ""


def _server_problem(url: str) -> str:
    import ssl
    import urllib.error
    import urllib.request

    if urlparse(url).username:  # credentials: MLflow's own check
        return ""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=SERVER_CHECK_TIMEOUT_S):
            return ""
    except urllib.error.HTTPError:
        return ""  # it answers (an older server, or a proxy in front): MLflow says more
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        if isinstance(why, ssl.SSLError) or isinstance(exc, ValueError):
            return ""  # it answers, over TLS this check does not configure: MLflow's turn
        return (f"the MLflow tracking server at {url} does not answer ({why}); start it or "
                "set MLFLOW_TRACKING_URI to one that does")


_ACCEPTED: set[str] = set()  # URIs that passed once: not looked at again by this process


def check_tracking_store() -> None:
    """RegistryError (one line) when the tracking or registry URI is one MLflow must not
    be pointed at (`tracking_store_problem`). Every `registry.client()` asks, so a URI
    that passed is remembered rather than opened (or its server asked) again."""
    for uri in dict.fromkeys((tracking_uri(), registry_uri())):
        if uri in _ACCEPTED:
            continue
        problem = tracking_store_problem(uri)
        if problem:
            raise RegistryError(problem)
        _ACCEPTED.add(uri)


def wanted(metric: str) -> bool:
    return metric in KEY_METRICS or metric.startswith("eval_")


def read_versions(name: str) -> list[dict[str, Any]] | None:
    """Newest first, as `storage.registry.list_versions`; None when only MLflow can answer.

    RegistryError when the registry has no model `name` (a missing database file has none:
    MLflow would create an empty one and say the same).
    """
    if os.environ.get("MLFLOW_WORKSPACE") or tracking_uri() != registry_uri():
        return None
    db = sqlite_path(registry_uri())
    if db is None:
        return None
    if not db.is_file():
        raise RegistryError(f"no registered model named {name!r}")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        return _read(con, name)
    except sqlite3.Error:
        return None  # locked, damaged or unexpected: MLflow's answer, with its message
    finally:
        con.close()


def schema_known(con: sqlite3.Connection) -> bool:
    """Every table and column the reader queries exists (PRAGMA table_info reads no rows)."""
    for table, columns in READ_COLUMNS.items():
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            return False
    return True


def _read(con: sqlite3.Connection, name: str) -> list[dict[str, Any]] | None:
    if not schema_known(con):
        return None
    ws = DEFAULT_WORKSPACE
    if not con.execute("SELECT 1 FROM registered_models WHERE workspace = ? AND name = ?",
                       (ws, name)).fetchone():
        raise RegistryError(f"no registered model named {name!r}")
    if "'" in name:
        raise RegistryError(f"invalid model name {name!r}")
    aliases: dict[int, list[str]] = {}
    for alias, version in con.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE workspace = ? AND "
            "name = ?", (ws, name)):
        aliases.setdefault(int(version), []).append(alias)
    tags: dict[int, dict[str, str]] = {}
    for key, value, version in con.execute(
            "SELECT key, value, version FROM model_version_tags WHERE workspace = ? AND "
            "name = ?", (ws, name)):
        tags.setdefault(int(version), {})[key] = value
    versions = con.execute(
        "SELECT version, run_id, creation_time, status FROM model_versions WHERE workspace = ? "
        "AND name = ? AND (current_stage IS NULL OR current_stage != ?)",
        (ws, name, STAGE_DELETED_INTERNAL)).fetchall()
    runs = sorted({run for _, run, _, _ in versions if run})
    metrics: dict[str, dict[str, float]] = {}
    if runs:
        marks = ",".join("?" * len(runs))
        for key, value, is_nan, run in con.execute(
                f"SELECT key, value, is_nan, run_uuid FROM latest_metrics WHERE run_uuid IN "
                f"({marks})", runs):
            if wanted(key):
                metrics.setdefault(run, {})[key] = math.nan if is_nan else float(value)
    rows = [{
        "version": int(version),
        "aliases": sorted(aliases.get(int(version), [])),
        "tags": tags.get(int(version), {}),
        "metrics": metrics.get(run, {}) if run else {},
        "run_id": run,
        "created": datetime.fromtimestamp((created or 0) / 1000, UTC).isoformat(),
        "status": status,
    } for version, run, created, status in versions]
    rows.sort(key=lambda r: r["version"], reverse=True)
    return rows
