"""`audio-wgan serve`: a registered model behind MLflow's scoring server, guarded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option, ranged
from flows.defaults import MODEL_NAME
from gan.limits import PORT

DEFAULT_SERVE_PORT = 5001  # MLflow's UI takes 5000


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        short_help="serve a registered model over HTTP",
        help="Serve a model (models:/NAME@ALIAS, models:/NAME/VERSION, or a run's model) "
        "with MLflow's scoring server (POST /invocations, GET /ping), behind a guard that "
        "refuses bodies over 1 MiB, non-JSON content, NaN, deep nesting and loosely typed "
        "count/seed/return_mel in one line, and never answers with a stack trace. Ctrl-C "
        "stops it. Honours MLFLOW_TRACKING_URI.",
    )(command)


def command(
    model: Annotated[str, option("--model", metavar="URI", help="the model to serve")
                     ] = f"models:/{MODEL_NAME}@champion",
    host: Annotated[str, option("--host", metavar="HOST", help="address to listen on "
                                "(default 127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, option("--port", parser=ranged(PORT, "--port"), metavar="N",
                                help=f"port, 1..65535 (default {DEFAULT_SERVE_PORT})")
                    ] = DEFAULT_SERVE_PORT,
) -> int:
    return dispatch("serve", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from storage.model_uri import ModelUriError, check_model_uri
    from storage.registry import RegistryError, configure

    try:
        check_model_uri(args.model)
        configure()
    except (ModelUriError, RegistryError) as exc:
        raise UserError(str(exc)) from None
    import mlflow.pyfunc
    import uvicorn
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import init

    from storage.serving_guard import guard

    try:
        model = mlflow.pyfunc.load_model(args.model)
    except (MlflowException, OSError, ValueError) as exc:  # ValueError: a bad setting
        text = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise UserError(f"cannot load {args.model}: {text}") from None
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations "
          "(Ctrl-C stops)", flush=True)
    uvicorn.run(guard(init(model)), host=args.host, port=args.port, log_level="warning")
    return 0
