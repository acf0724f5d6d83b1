"""`--model URI` for generate, render and evaluate: one loader, every failure one line."""

from __future__ import annotations

from typing import Any


def load_model_bundle(uri: str) -> Any:
    """GeneratorBundle from an MLflow URI or a local bundle folder; bad input -> UserError.

    The URI's form is checked before MLflow is asked (storage.model_uri), and the bundle
    before anything is allocated (storage.bundle_schema).
    """
    from mlflow.exceptions import MlflowException

    from audio_wgan.cli import UserError
    from storage.bundle_schema import BundleError
    from storage.model_uri import ModelUriError, check_model_uri
    from storage.registry import RegistryError, load_bundle

    try:
        return load_bundle(check_model_uri(uri))
    except ModelUriError as exc:
        raise UserError(str(exc)) from None
    except (RegistryError, BundleError, FileNotFoundError, MlflowException, OSError,
            ValueError) as exc:
        # OSError covers a registry or artifact store that cannot be reached
        text = " ".join(str(getattr(exc, "message", None) or exc).split())
        reason = text[:300] if text else type(exc).__name__
        raise UserError(f"cannot load model {uri[:200]}: {reason}") from None
