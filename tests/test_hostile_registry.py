"""Tracking URIs a careless user sets: a file that is not a database, a SQLite database
of another program, a server that does not answer. Each is refused in one line (exit 2),
at once, and nothing is written into the file."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from hostile_checks import refused


def _use(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def test_a_file_that_is_not_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    _use(monkeypatch, f"sqlite:///{passwd}")
    line = refused(capsys, ["models"], passwd)
    assert line == (f"audio-wgan models: error: {passwd} is not a SQLite database, so not "
                    "an MLflow one; refusing to use it"), line


def test_a_database_mlflow_did_not_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from storage import registry
    from storage.registry_listing import RegistryError

    db = tmp_path / "notes.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('mine')")
    _use(monkeypatch, f"sqlite:///{db}")
    line = refused(capsys, ["models"], db)
    assert line.endswith(f"{db} is a SQLite database MLflow did not create; refusing to "
                         "write MLflow's tables into it"), line
    with pytest.raises(RegistryError, match="MLflow did not create"):
        registry.client()  # what train, evaluate and retrain go through
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}


def test_a_server_that_does_not_answer_is_named_at_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on (refused at once)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _use(monkeypatch, f"http://127.0.0.1:{port}")
    line = refused(capsys, ["models"])
    assert line.startswith(f"audio-wgan models: error: the MLflow tracking server at "
                           f"http://127.0.0.1:{port} does not answer"), line
