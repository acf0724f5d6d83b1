"""Helpers for the hostile-input tests: run the CLI in-process, snapshot what it may touch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def snapshot(*roots: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under `roots` (and the roots): kind, size and content hash, so that a
    refused command can be shown to have written, created or deleted nothing."""
    out: dict[str, tuple[str, int, str]] = {}
    for root in roots:
        if not os.path.lexists(root):
            out[str(root)] = ("absent", 0, "")
            continue
        paths = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
        for p in paths:
            if p.is_symlink():
                out[str(p)] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", 0, "")
            else:
                data = p.read_bytes()
                out[str(p)] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return out


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *untouched: Path) -> str:
    """Run `audio-wgan argv` in-process; assert exit 2 and nothing changed under
    `untouched`; return the last line of stderr (the reason)."""
    from audio_wgan.cli import main

    before = snapshot(*untouched)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines, f"no reason printed for {argv}"
    assert snapshot(*untouched) == before, f"{argv} changed {untouched}"
    return lines[-1]
