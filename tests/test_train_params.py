"""One declaration per training knob: `TrainParams` is the truth; the flow's signature, the
CLI's `train` options and prefect.yaml's train deployment are checked against it, so a knob
missing or defaulting differently in one of them fails here."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from audio_wgan.cli import build_command
from flows.train import TrainParams, train, validate_params

ROOT = Path(__file__).resolve().parents[1]
# CLI options whose name or sense differs from the parameter they set
CLI_TO_PARAM = {"no_register": ("register", lambda v: not v),
                "quiet": ("show_progress", lambda v: not v)}
# defaults the CLI sets apart on purpose: a person at a terminal sees progress lines
CLI_OWN_DEFAULTS = {"show_progress"}


def _fields() -> dict[str, object]:
    return {(f.alias or name): f.default for name, f in TrainParams.model_fields.items()}


def test_the_flow_takes_exactly_the_declared_parameters() -> None:
    sig = inspect.signature(train.fn)
    flow = {n: p.default for n, p in sig.parameters.items()}
    assert flow == _fields()


def test_every_train_option_is_a_declared_parameter_with_its_default() -> None:
    command = build_command("train").commands["train"]
    fields = _fields()
    seen = set()
    for param in command.params:
        if param.name == "help":
            continue
        assert param.opts == [f"--{param.name.replace('_', '-')}"], param.opts  # one spelling
        name, conv = CLI_TO_PARAM.get(param.name, (param.name, lambda v: v))
        assert name in fields, f"--{param.name} sets no TrainParams field"
        if param.required or name in CLI_OWN_DEFAULTS:
            continue
        assert conv(param.default) == fields[name], f"--{param.name} default differs"
        seen.add(name)
    assert {"preset", "epochs", "max_minutes", "nproc", "batch_size", "seed"} <= seen


def test_prefect_yaml_train_parameters_validate() -> None:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in doc["deployments"]:
        if d["entrypoint"] == "flows/train.py:train":
            params = validate_params(d["parameters"])
            assert set(d["parameters"]) <= set(_fields())
            assert params.train_config().preset == d["parameters"]["preset"]


def test_train_refuses_bad_knobs_before_any_work(tmp_path: Path, capsys) -> None:
    from audio_wgan.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["--checkpoint-dir", str(blocker / "ck")], "--checkpoint-dir"),
        (["--seed", str(10**23)], "--seed"),
        (["--nproc", "0"], "nproc"),
        (["--max-minutes", "0"], "max_minutes"),
        (["--max-minutes", "nan"], "max_minutes"),
        (["--preset", "huge"], "--preset"),
    ]
    for extra, what in cases:
        rc = main(["train", "--store", str(tmp_path / "no.zarr"),
                   "--checkpoint-dir", str(tmp_path / "ck"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err and what in err[-1], (extra, err)
        assert not (tmp_path / "ck").exists() and not (tmp_path / "no.zarr").exists()
