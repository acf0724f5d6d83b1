"""`audio-wgan models` reads the embedded SQLite registry without MLflow
(`storage.registry_listing`): the same rows as MLflow's own client, on a registry MLflow
wrote, and no answer (so MLflow is asked) wherever the reader cannot vouch for one."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from registry_fixtures import make_bundle, register_bundle

from storage import registry, registry_listing
from storage.registry_listing import RegistryError, read_versions, schema_known, sqlite_path

NAME = "audio-wgan"


@pytest.fixture
def populated(tmp_path: Path, mlflow_uri: str) -> Path:
    """Three versions written by MLflow: aliases, tags, key metrics (one NaN), a metric that
    is not shown, a run metric logged twice (the latest counts), and one deleted version."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
    for i in range(4):
        v = register_bundle(make_bundle(tmp_path / f"b{i}", seed=i),
                            tags={"preset": "tiny", "epochs": str(10 * i)})
        run = c.get_model_version(NAME, str(v)).run_id
        c.log_metric(run, "critic_loss", 1.5 + i, step=0)
        c.log_metric(run, "critic_loss", -0.25 * i, step=1)
        c.log_metric(run, "eval_frechet_distance", math.nan if i == 1 else 20.0 - i)
        c.log_metric(run, "not_shown", 7.0)
    registry.set_alias(NAME, "champion", 2)
    registry.set_alias(NAME, "candidate", 3)
    c.delete_model_version(NAME, "4")
    return sqlite_path(mlflow_uri)


def same(a: list[dict], b: list[dict]) -> bool:
    """Equal rows, NaN metrics equal to NaN."""
    def norm(rows: list[dict]) -> list[dict]:
        return [{**r, "metrics": {k: "nan" if math.isnan(v) else v
                                  for k, v in r["metrics"].items()}} for r in rows]
    return norm(a) == norm(b)


def test_same_rows_as_mlflow(populated: Path) -> None:
    quick = read_versions(NAME)
    assert quick is not None
    assert same(quick, registry.list_versions(NAME))
    assert [r["version"] for r in quick] == [3, 2, 1]  # newest first; v4 was deleted
    v2 = next(r for r in quick if r["version"] == 2)
    assert v2["aliases"] == ["champion"] and v2["tags"]["epochs"] == "10"
    assert v2["metrics"]["critic_loss"] == -0.25 and math.isnan(
        v2["metrics"]["eval_frechet_distance"])
    assert "not_shown" not in v2["metrics"]


def test_the_schema_mlflow_writes_is_known(mlflow_uri: str) -> None:
    """A new MLflow that drops or renames a column the reader uses fails here (`make
    test-latest`), so the reader is looked at again; `test_same_rows_as_mlflow` catches one
    that keeps the columns and changes what they mean."""
    with sqlite3.connect(sqlite_path(mlflow_uri)) as con:
        assert schema_known(con)


def test_another_revision_with_the_same_tables_is_read(populated: Path) -> None:
    """The alembic revision alone decides nothing: MLflow 3.18.0 moved it without touching
    the tables read here (a revision list made every release fall back to the slow path)."""
    before = registry.list_versions(NAME)
    with sqlite3.connect(populated) as con:
        con.execute("UPDATE alembic_version SET version_num = 'f00000000000'")
    quick = read_versions(NAME)
    assert quick is not None and same(quick, before)


@pytest.mark.parametrize("change", [
    "ALTER TABLE latest_metrics RENAME COLUMN is_nan TO nan_flag",
    "ALTER TABLE registered_model_aliases RENAME TO model_aliases",
])
def test_an_unknown_schema_is_left_to_mlflow(populated: Path, change: str) -> None:
    with sqlite3.connect(populated) as con:
        con.execute(change)
    assert read_versions(NAME) is None


def test_an_unknown_schema_falls_back_to_mlflow_with_the_same_rows(
        populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema the reader does not know (faked: it asks for a column MLflow never wrote)
    still lists the same rows, through MLflow."""
    from tasks.retrain_plan import registered_versions

    quick = read_versions(NAME)
    assert quick is not None
    wanted = {**registry_listing.READ_COLUMNS,
              "model_versions": registry_listing.READ_COLUMNS["model_versions"] | {"x"}}
    monkeypatch.setattr(registry_listing, "READ_COLUMNS", wanted)
    assert read_versions(NAME) is None
    assert same(registered_versions(NAME), quick)


def test_unknown_model_and_missing_database(tmp_path: Path, populated: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RegistryError, match="no registered model named 'other'"):
        read_versions("other")
    with pytest.raises(registry.RegistryError, match="no registered model named 'other'"):
        registry.list_versions("other")  # MLflow says the same
    absent = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", absent)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", absent)
    with pytest.raises(RegistryError, match="no registered model named"):
        read_versions(NAME)
    assert not (tmp_path / "nowhere").exists()  # a look creates nothing


def test_other_registries_are_left_to_mlflow(populated: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for uri in ("http://127.0.0.1:5000", "postgresql://u@localhost/db",
                f"sqlite:///{populated}?timeout=5"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
        assert read_versions(NAME) is None
    uri = f"sqlite:///{populated}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-b")
    assert read_versions(NAME) is None


def test_a_damaged_database_is_left_to_mlflow(populated: Path) -> None:
    shutil.copy(populated, populated.with_suffix(".bak"))
    populated.write_bytes(b"not a database" * 100)
    assert read_versions(NAME) is None
