"""A hand-edited, damaged or planted manifest: every command that reads it refuses in one
line (exit 2) naming what is wrong, in bounded memory, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile_checks import refused
from store_fixtures import build, new_file

Edit = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d[key] = value
    return edit


def _file(i: int, key: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["files"][i][key] = value
    return edit


def _dup_class(d: dict[str, Any]) -> None:
    d["classes"] = [d["classes"][0]] * len(d["classes"])


def _dup_file(d: dict[str, Any]) -> None:
    d["files"].append(dict(d["files"][0], id=999))


def _overlap(d: dict[str, Any]) -> None:
    d["files"][1]["start"] = d["files"][0]["start"]


EDITS = {
    "negative rows": (_set("rows", -23), "rows is -23, not a count"),
    "start after stop": (_file(0, "start", 5), "are not within"),
    "rows past the arrays": (_file(0, "stop", 10**6), "are not within"),
    "label of no class": (_file(0, "label", 7), "label 7 names no class"),
    "label not an int": (_file(0, "label", "0"), "label is '0', not an integer"),
    "classes merged": (_dup_class, "names a class or a file twice"),
    "a file twice": (_dup_file, "own the same rows"),
    "rows owned twice": (_overlap, "own the same rows"),
    "files not a list": (_set("files", {"a": 1}), "files is not a list of objects"),
    "classes not names": (_set("classes", [1, 2]), "classes is not a list of names"),
    "settled past commits": (_set("settled", 10**9), "settled is past commits"),
    "rejected without path": (_set("rejected", [{"reason": "x"}]), "has no path"),
    "mel not an object": (_set("mel", [1]), "mel is not an object"),
    "bool as a count": (_set("commits", True), "commits is True, not a count"),
}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "s.zarr"
    build(s, [new_file("a/0.wav", 3, 1), new_file("b/1.wav", 2, 2), new_file("a/2.wav", 4, 3)])
    return s


@pytest.mark.parametrize("name", list(EDITS))
@pytest.mark.parametrize("command", [["store-info"], ["store-info", "--verify"],
                                     ["compact"]])
def test_an_edited_manifest_is_refused_in_one_line(
        store: Path, capsys: pytest.CaptureFixture[str], name: str, command: list[str]
        ) -> None:
    edit, reason = EDITS[name]
    doc = json.loads((store / "manifest.json").read_bytes())
    edit(doc)
    (store / "manifest.json").write_text(json.dumps(doc))
    line = refused(capsys, [command[0], str(store), *command[1:]], store)
    assert line.startswith(f"audio-wgan {command[0]}: error:"), line
    assert reason in line, line


@pytest.mark.parametrize("plant", ["dev-zero", "directory", "huge"])
def test_a_planted_manifest_is_refused_in_bounded_memory(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], plant: str) -> None:
    """A link to /dev/zero (read until memory runs out, before), a directory, or a sparse
    file larger than any manifest: refused from its kind or size, never read whole."""
    import os

    from storage.store_errors import MAX_METADATA_BYTES

    m = store / "manifest.json"
    m.unlink()
    if plant == "dev-zero":
        m.symlink_to("/dev/zero")
    elif plant == "directory":
        m.mkdir()
    else:
        with open(m, "wb") as f:
            f.truncate(MAX_METADATA_BYTES + 1)
    for command in (["store-info"], ["store-info", "--verify"]):
        line = refused(capsys, [command[0], str(store), *command[1:]], store)
        assert line.startswith("audio-wgan store-info: error:"), line
    assert os.path.lexists(m)
