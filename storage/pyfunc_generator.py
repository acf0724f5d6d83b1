"""The registered model as MLflow "models from code": (class, count, seed) -> audio clips.

MLflow copies this file into the logged model and imports it at load time, so nothing is
pickled: the weights are the `bundle` artifact (state_dict + JSON, see
`storage/model_bundle.py`). The project packages (`gan`, `storage`) must be importable where
the model is loaded or served (`pip install -e .`), e.g.
`mlflow models serve -m models:/audio-wgan@champion --env-manager local`.

A request is checked as a whole before any clip is made: every row against `ClipRequest`
(types strict, the CLI's ranges from `gan.limits`), then the request's total against the
clip and sample budgets, so one request cannot ask for unbounded time or memory; a
per-second sample budget (a token bucket per serving process) answers HTTP 429 beyond it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_EXHAUSTED
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gan.limits import CLIPS, SEED, env_number
from gan.spectral import MelInverter
from storage.bundle_schema import MAX_CLASS_NAME, first_error
from storage.model_bundle import GeneratorBundle, load_bundle_dir, synthesise

MAX_REQUEST_CLIPS = CLIPS.hi  # clips of all rows together: the same cap as one row
# audio samples plus returned mel values of all rows together (~128 MiB of float32): 512
# clips of the seed's 2.97 s at 22.05 kHz fit, with their mels they do not
MAX_REQUEST_SAMPLES = 1 << 25
# samples per second one serving process makes (a token bucket holding one full request):
# set AUDIO_WGAN_SERVE_SAMPLES_PER_S lower to share a machine; refusals are HTTP 429
SAMPLES_PER_S_ENV = "AUDIO_WGAN_SERVE_SAMPLES_PER_S"


class OverBudget(Exception):
    """A request the per-second budget cannot serve now; the message says when it can."""


class SampleBudget:
    """Token bucket: `rate` samples per second, at most `burst` saved up. The clock is a
    parameter so that a test can step it instead of sleeping."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens, self.stamp = float(burst), clock()

    @classmethod
    def from_env(cls) -> SampleBudget:
        rate = env_number(SAMPLES_PER_S_ENV, MAX_REQUEST_SAMPLES)  # SettingError if bad
        return cls(rate, max(rate, MAX_REQUEST_SAMPLES))

    def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            wait = (n - self.tokens) / self.rate
            raise OverBudget(f"over this server's budget of {self.rate:.0f} samples/s: the "
                             f"request needs {n}; retry in {wait:.1f} s")
        self.tokens -= n


class ClipRequest(BaseModel):
    """One row of a request. Strict: 1.5, "2" or true is not a count."""

    model_config = ConfigDict(extra="forbid", strict=True)
    class_name: str = Field(alias="class", min_length=1, max_length=MAX_CLASS_NAME)
    count: int = Field(1, ge=CLIPS.lo, le=CLIPS.hi)
    seed: int = Field(0, ge=SEED.lo, le=SEED.hi)
    return_mel: bool = False


def _records(model_input: Any) -> list[dict[str, Any]]:
    """DataFrame (what the scoring server passes), list of dicts or one dict -> rows."""
    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        rows = list(model_input)
    else:
        raise TypeError(f"expected a DataFrame or records with a 'class' column, "
                        f"got {type(model_input).__name__}")
    if not rows:
        raise ValueError("the request has no rows")
    return [_plain(r) for r in rows]


def _plain(row: dict[Any, Any]) -> dict[Any, Any]:
    """A row as JSON would give it: numpy scalars as Python ones, missing cells (None, NaN:
    a DataFrame's column with gaps) left out, whole floats (a column pandas made float by
    its gaps) as ints. Anything else stays as it came, for the schema to judge."""
    out: dict[Any, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        out[key] = value
    return out


def parse_request(model_input: Any, samples_per_clip: int, mel_values: int
                  ) -> list[ClipRequest]:
    """Every row validated, then the request's totals checked against the budgets
    (`request_samples` gives the total that the per-second budget is charged)."""
    reqs = []
    for i, row in enumerate(_records(model_input)):
        try:
            reqs.append(ClipRequest.model_validate(row))
        except ValidationError as exc:
            raise ValueError(f"row {i}: {first_error(exc)}") from None
    clips = sum(r.count for r in reqs)
    if clips > MAX_REQUEST_CLIPS:
        raise ValueError(f"the request asks for {clips} clips; at most {MAX_REQUEST_CLIPS} "
                         f"per request (split it)")
    values = request_samples(reqs, samples_per_clip, mel_values)
    if values > MAX_REQUEST_SAMPLES:
        raise ValueError(f"the request asks for {values} samples; at most "
                         f"{MAX_REQUEST_SAMPLES} per request (fewer clips, or no mels)")
    return reqs


def request_samples(reqs: list[ClipRequest], samples_per_clip: int, mel_values: int) -> int:
    """Audio samples plus returned mel values of all rows together."""
    return sum(r.count * (samples_per_clip + (mel_values if r.return_mel else 0))
               for r in reqs)


class AudioWGANModel(mlflow.pyfunc.PythonModel):
    """Class-conditional generator + Griffin-Lim inverter, deterministic for a seed."""

    bundle: GeneratorBundle
    inverter: MelInverter
    budget: SampleBudget

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = load_bundle_dir(context.artifacts["bundle"])
        self.inverter = MelInverter(self.bundle.mel)
        self.budget = SampleBudget.from_env()

    # pd.DataFrame is a hint MLflow derives no schema from: the signature logged with the
    # model (storage.registry.model_signature) is the contract; lists of dicts work too
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per clip. Bad requests raise MlflowException(INVALID_PARAMETER_VALUE):
        the scoring server then answers 400 with our one-line reason in its message, where
        any other exception becomes a generic "unexpected error"."""
        try:
            return self._predict(model_input)
        except (ValueError, TypeError) as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from exc
        except OverBudget as exc:
            raise MlflowException(str(exc), error_code=RESOURCE_EXHAUSTED) from exc

    def _predict(self, model_input: Any) -> pd.DataFrame:
        mel = self.bundle.mel
        reqs = parse_request(model_input, mel.segment_samples, mel.n_mels * mel.frames)
        for r in reqs:  # every row's class known before the first clip is made
            if r.class_name not in self.bundle.class_names:
                raise ValueError(f"unknown class {r.class_name[:200]!r}; the model knows "
                                 f"{self.bundle.class_names}"[:500])
        self.budget.take(request_samples(reqs, mel.segment_samples, mel.n_mels * mel.frames))
        out: list[dict[str, Any]] = []
        for r in reqs:
            waves, db = synthesise(self.bundle, r.class_name, r.count, r.seed, self.inverter)
            for i in range(r.count):
                row: dict[str, Any] = {
                    "class": r.class_name,
                    "index": i,
                    "seed": r.seed,
                    "sample_rate": int(mel.sample_rate),
                    "audio": waves[i].numpy().astype(np.float32).tolist(),
                }
                if r.return_mel:
                    row["mel_db"] = db[i].numpy().astype(np.float32).tolist()
                out.append(row)
        return pd.DataFrame(out)


mlflow.models.set_model(AudioWGANModel())
