"""One declaration per precompute knob: `PrecomputeParams` is the truth; the flow's signature,
the CLI's `precompute` options and prefect.yaml's precompute deployment are checked against
it (and the mel options against MelConfig), so a knob missing or defaulting differently in
one of them fails here."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from audio_wgan.cli import build_command
from audio_wgan.cmd_precompute import COMPACT, MEL_ARGS
from flows.precompute import precompute
from flows.precompute_params import PrecomputeParams, validate_params
from gan.limits import POOLS
from gan.mel_config import LONG_CLIP_POLICIES, PAD_POLICIES, TAIL_POLICIES, MelConfig
from tasks.precompute import PrecomputeError

ROOT = Path(__file__).resolve().parents[1]
CLI_ONLY = {"as_json"}  # --json: how the CLI prints the summary
# the CLI's mel options: a MelConfig field each, None = the new store's default
CLI_CHOICES = {"pool": POOLS, "compact": tuple(COMPACT), "tail_policy": TAIL_POLICIES,
               "pad_policy": PAD_POLICIES, "long_clip_policy": LONG_CLIP_POLICIES}


def _fields() -> dict[str, object]:
    return {name: f.default for name, f in PrecomputeParams.model_fields.items()}


def test_the_flow_takes_exactly_the_declared_parameters() -> None:
    sig = inspect.signature(precompute.fn)
    flow = {n: p.default for n, p in sig.parameters.items()}
    fields = _fields()
    assert set(flow) == set(fields)
    for name, default in flow.items():
        if default is not inspect.Parameter.empty:
            assert default == fields[name], name


def test_every_precompute_option_is_a_declared_parameter_or_mel_field() -> None:
    command = build_command("precompute").commands["precompute"]
    fields, mel_fields = _fields(), {f.name for f in dataclasses.fields(MelConfig)}
    seen = set()
    for param in command.params:
        if param.name == "help" or param.name in CLI_ONLY:
            continue
        if param.name in MEL_ARGS:  # --sample-rate ... --pad-policy: new stores only
            assert param.name in mel_fields and param.default is None, param.name
        elif param.name == "compact":
            assert COMPACT[param.default] == fields["compact"]
        else:
            assert param.name in fields, f"--{param.name} sets no PrecomputeParams field"
            if not param.required:
                assert param.default == fields[param.name], f"--{param.name} default differs"
        if param.name in CLI_CHOICES:
            assert param.metavar == "[" + "|".join(CLI_CHOICES[param.name]) + "]"
        seen.add(param.name)
    assert set(MEL_ARGS) <= seen and set(fields) - {"mel"} <= seen | {"data_dir"}
    assert set(MEL_ARGS) == mel_fields  # every mel field has an option


def test_prefect_yaml_precompute_parameters_validate() -> None:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = 0
    for d in doc["deployments"]:
        if d["entrypoint"] == "flows/precompute.py:precompute":
            params = validate_params(d["parameters"])
            MelConfig(**(params.mel or {}))
            found += 1
    assert found


@pytest.mark.parametrize(("values", "line"), [
    ({"batch_size": 0}, "invalid batch_size: Input should be greater than or equal to 1"),
    ({"workers": 10**6}, "invalid workers: Input should be less than or equal to 1024"),
    ({"pool": "fork"}, "invalid pool: must be one of auto, threads, processes, dask"),
    ({"dask_address": "tcp://h:1"}, "dask_address needs pool 'dask', not 'auto'"),
    ({"pool": "dask", "dask_address": "tcp://h:1", "workers": 2},
     "workers does not apply to an existing Dask cluster"),
    ({"store": ""}, "invalid store: String should have at least 1 character"),
    ({"threads": 4}, "invalid threads: Extra inputs are not permitted"),
])
def test_bad_parameters_are_one_line(values: dict[str, object], line: str) -> None:
    with pytest.raises(PrecomputeError) as exc:
        validate_params({"data_dir": "d", "store": "s", **values})
    assert line in str(exc.value) and "\n" not in str(exc.value)
