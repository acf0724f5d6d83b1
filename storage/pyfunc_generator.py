"""The registered model as MLflow "models from code": (class, count, seed) -> audio clips.

MLflow copies this file into the logged model and imports it at load time, so nothing is
pickled: the weights are the `bundle` artifact (state_dict + JSON, see
`storage/model_bundle.py`). The project packages (`gan`, `storage`) must be importable where
the model is loaded or served (`pip install -e .`), e.g.
`mlflow models serve -m models:/audio-wgan@champion --env-manager local`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from gan.spectral import MelInverter
from storage.model_bundle import GeneratorBundle, load_bundle_dir, synthesise


def _requests(model_input: Any) -> list[dict[str, Any]]:
    """DataFrame (what the scoring server passes), list of dicts or one dict -> rows."""
    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list):
        rows = [dict(r) for r in model_input]
    else:
        raise TypeError(f"expected a DataFrame or records with a 'class' column, "
                        f"got {type(model_input).__name__}")
    return rows


def _int(value: Any, default: int) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    return int(value)


def _flag(value: Any) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return bool(value)


class AudioWGANModel(mlflow.pyfunc.PythonModel):
    """Class-conditional generator + Griffin-Lim inverter, deterministic for a seed."""

    bundle: GeneratorBundle
    inverter: MelInverter

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = load_bundle_dir(context.artifacts["bundle"])
        self.inverter = MelInverter(self.bundle.mel)

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

    def _predict(self, model_input: Any) -> pd.DataFrame:
        out: list[dict[str, Any]] = []
        for req in _requests(model_input):
            name = req.get("class")
            if not isinstance(name, str):
                raise ValueError("each request needs a 'class' (string)")
            count, seed = _int(req.get("count"), 1), _int(req.get("seed"), 0)
            waves, db = synthesise(self.bundle, name, count, seed, self.inverter)
            for i in range(count):
                row: dict[str, Any] = {
                    "class": name,
                    "index": i,
                    "seed": seed,
                    "sample_rate": int(self.bundle.mel.sample_rate),
                    "audio": waves[i].numpy().astype(np.float32).tolist(),
                }
                if _flag(req.get("return_mel")):
                    row["mel_db"] = db[i].numpy().astype(np.float32).tolist()
                out.append(row)
        return pd.DataFrame(out)


mlflow.models.set_model(AudioWGANModel())
