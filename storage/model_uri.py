"""Which model URIs are taken, checked before MLflow is asked to resolve one.

MLflow tries hard with what it is given (an http URL is retried against an artifact
server; a mistyped local path becomes a relative artifact URI), so a careless `--model`
used to end in a traceback or a long wait. The forms below are what the registry and the
README promise; anything else is refused at once in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a local bundle folder"
_MODELS = re.compile(r"^models:/[^/@\s]{1,256}(/[^/@\s]{1,64}|@[\w.-]{1,256})$")
_RUNS = re.compile(r"^runs:/[0-9a-zA-Z]{1,64}(/[^\s]*)?$")
# artifact stores MLflow reads a logged model from directly (object storage, local files)
_STORES = ("file", "s3", "gs", "wasbs", "hdfs", "mlflow-artifacts")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class ModelUriError(ValueError):
    """A --model value that is none of the accepted forms; one line."""


def check_model_uri(uri: str) -> str:
    """`uri` unchanged when it has one of the accepted forms (see FORMS)."""
    text = uri.strip()
    if not text or "\0" in text or len(text) > 4096:
        raise ModelUriError(f"model URI {uri[:80]!r} is empty or malformed; use {FORMS}")
    m = _SCHEME.match(text)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else None  # C:\ is a path
    if scheme is None:
        p = Path(text)
        if not p.is_dir():
            raise ModelUriError(f"model {text[:200]}: no such folder (use {FORMS})")
        return text
    if scheme == "models" and _MODELS.match(text):
        return text
    if scheme == "runs" and _RUNS.match(text):
        return text
    if scheme in _STORES and len(text) > len(scheme) + 2:
        return text
    raise ModelUriError(f"model URI {text[:200]!r} is not supported; use {FORMS}")
