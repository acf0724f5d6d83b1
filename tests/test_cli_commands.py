"""The typer CLI as a whole: every command has a --help that lists its options, every
refusal of click's parser is one line and exit 2 (no usage block, no rich panel), and the
shell completion script is produced and answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audio_wgan.cli import COMMAND_MODULES, build_command, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [name.replace("_", "-") for name in COMMAND_MODULES]


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run argv in-process; assert exit 2 and a one-line stderr; return that line."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err and "Usage:" not in err and "╭" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_lists_its_options(command: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: audio-wgan {command} ")
    for param in build_command(command).commands[command].params:
        for opt in param.opts if param.param_type_name == "option" else [param.metavar]:
            assert opt in out, (command, opt)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in COMMANDS)
    assert "--install-completion" in out and "--show-completion" in out
    assert main(["-h"]) == 0


def test_no_command_shows_the_list_and_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    cap = capsys.readouterr()
    assert "Commands:" in cap.out
    assert cap.err.strip() == "audio-wgan: error: a command is required (see the list above)"


@pytest.mark.parametrize("argv, line", [
    (["train", "--store", "s", "--epochs", "ten"],
     "audio-wgan train: error: argument --epochs: "),
    (["evaluate", "--model", "m", "--store", "s", "--n-per-class", "1.5"],
     "audio-wgan evaluate: error: argument --n-per-class: "),
    (["train", "--store", "s", "--bogus"], "audio-wgan train: error: No such option: --bogus"),
    (["train"], "audio-wgan train: error: the following arguments are required: --store"),
    (["precompute", "--store", "s"],
     "audio-wgan precompute: error: the following arguments are required: DATA_DIR"),
    (["store-info", "a", "b"], "audio-wgan store-info: error: Got unexpected extra argument"),
    (["train", "--store"], "audio-wgan train: error: Option '--store' requires an argument"),
    (["precompute", "d", "--store", "s", "--pool", "gpu"],
     "audio-wgan precompute: error: argument --pool: invalid choice: 'gpu' (choose from "
     "'auto', 'threads', 'processes', 'dask')"),
    (["server", "restart"], "audio-wgan server: error: argument ACTION: invalid choice"),
    (["trian"], "audio-wgan: error: No such command 'trian'. Did you mean 'train'?"),
    (["--bogus"], "audio-wgan: error: No such option: --bogus"),
])
def test_a_refusal_of_the_parser_is_one_line(argv: list[str], line: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert one_line(capsys, argv).startswith(line)
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_in_a_fresh_process_is_the_last_line(tmp_path: Path) -> None:
    """As the console script runs: the same one line, exit 2, nothing else on stderr."""
    res = subprocess.run([sys.executable, "-m", "audio_wgan.cli", "generate", "--model", "m",
                          "--class", "c", "--out", str(tmp_path / "o"), "-n", "many"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert res.stderr == ("audio-wgan generate: error: argument -n/--count: must be an "
                          "integer between 1 and 512, not 'many'\n")


def test_completion_script_is_produced(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # name the shell
    for shell in ("bash", "zsh", "fish"):
        assert main(["--show-completion", shell]) == 0
        script = capsys.readouterr().out
        assert "_AUDIO_WGAN_COMPLETE" in script, shell


@pytest.mark.parametrize("words, cword, expected", [
    ("audio-wgan sto", 1, ["store-info"]),
    ("audio-wgan precompute --pool ", 3, ["auto", "threads", "processes", "dask"]),
    ("audio-wgan train --preset small", 3, ["small", "small-proj-cbn", "small-proj-cbn-diffaug"]),
])
def test_completion_answers_as_the_shell_asks(words: str, cword: int, expected: list[str],
                                              tmp_path: Path) -> None:
    """What bash's completion function runs: the console script with click's variables."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_AUDIO_WGAN_COMPLETE": "complete_bash",
           "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    res = subprocess.run([sys.executable, "-m", "audio_wgan.cli"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.split() == expected


def test_run_options_are_train_parameters_or_its_own() -> None:
    """`run` checks its training knobs with the train flow's parameter model before any
    work: each of its options is a TrainParams field (or one of run's own)."""
    from flows.train import TrainParams

    fields = {f.alias or name for name, f in TrainParams.model_fields.items()}
    names = {p.name for p in build_command("run").commands["run"].params} - {"help"}
    assert names - fields == {"data_dir", "force"}
