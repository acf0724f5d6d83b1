"""The console script's exit (`audio_wgan.cli.console`) skips the interpreter's teardown
but nothing a command leaves to the end: atexit handlers registered while it ran, logging
handlers, buffered stdout and stderr, the exit code, and Python's traceback for a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a stand-in for main(): registers what commands register late (Prefect's drains, MLflow's,
# a logging handler), writes unflushed output, then returns, exits or raises as asked
SCRIPT = """
import atexit, logging, sys
from pathlib import Path
from audio_wgan import cli

out = Path(sys.argv[1])
how = sys.argv[2]

def fake_main():
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    log = logging.getLogger("late")
    log.addHandler(logging.FileHandler(out / "log.txt", delay=False))
    log.warning("kept")
    sys.stdout.write("x" * 200_000)  # no newline, larger than any buffer
    sys.stderr.write("last line without a newline")
    if how == "raise":
        raise RuntimeError("a bug")
    if how == "exit":
        sys.exit(4)
    return 3

cli.main = fake_main
cli.console()
"""


def run(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), how], text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize(("how", "code"), [("return", 3), ("exit", 4), ("raise", 1)])
def test_console_exit_keeps_everything_but_the_teardown(tmp_path: Path, how: str,
                                                        code: int) -> None:
    out = run(tmp_path, how)
    assert out.returncode == code, out.stderr[-2000:]
    assert out.stdout == "x" * 200_000
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "log.txt").read_text() == "kept\n"
    if how == "raise":
        assert "RuntimeError: a bug" in out.stderr.splitlines()[-1]
    else:
        assert out.stderr.endswith("last line without a newline")


def test_the_console_script_is_console() -> None:
    """pyproject's entry point is the function that exits fast (and main stays callable)."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["scripts"]["audio-wgan"] == "audio_wgan.cli:console"
