"""`--model URI` for generate, render and evaluate: one loader, every failure one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model_bundle(uri: str) -> Any:
    """GeneratorBundle from an MLflow URI or a local bundle folder; bad input -> UserError.

    The URI's form is checked before MLflow is asked (storage.model_uri), and the bundle
    before anything is allocated (storage.bundle_schema).
    """
    from mlflow.exceptions import MlflowException

    from audio_wgan.command import UserError
    from storage.bundle_schema import BundleError
    from storage.model_uri import ModelUriError, check_model_uri
    from storage.registry import RegistryError, load_bundle

    try:
        checked = check_model_uri(uri)
    except ModelUriError as exc:
        raise UserError(str(exc)) from None
    # a registry or artifact store can fail in its client's own ways (botocore's
    # NoCredentialsError, a missing google-cloud package, a refused connection): for a
    # remote URI any of them is the reason the model cannot be had
    remote = not Path(checked).is_dir()
    expected: tuple[type[BaseException], ...] = (
        (Exception,) if remote else
        (RegistryError, BundleError, FileNotFoundError, MlflowException, OSError, ValueError))
    try:
        return load_bundle(checked)
    except expected as exc:
        text = " ".join(str(getattr(exc, "message", None) or exc).split())
        reason = f"{type(exc).__name__}: {text}" if remote and not isinstance(
            exc, RegistryError | BundleError | MlflowException) else text
        raise UserError(f"cannot load model {uri[:200]}: "
                        f"{reason[:300] or type(exc).__name__}") from None
