"""`audio-wgan promote NAME VERSION`: set an alias by hand, with the reason recorded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option


def register(app: typer.Typer) -> None:
    app.command(
        "promote",
        short_help="set @champion (or another alias) on a model version by hand",
        help="Point an alias of a registered model at VERSION (default alias: champion), "
        "overriding the promotion rule, and record why as the version's "
        "`promotion_reason` tag (`promotion_decision`: '<alias> (by hand)'). `audio-wgan "
        "models` shows it. Honours MLFLOW_TRACKING_URI.",
    )(command)


def command(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                        help="the registered model, e.g. audio-wgan")],
    version: Annotated[int, typer.Argument(metavar="VERSION", show_default=False, min=1,
                                           help="the version to point the alias at")],
    reason: Annotated[str, option("--reason", metavar="TEXT", show_default=False,
                                  help="why, recorded on the version")],
    alias: Annotated[str, option("--alias", metavar="ALIAS",
                                 help="the alias to set (default champion)")] = "champion",
) -> int:
    return dispatch("promote", run, locals())


def run(args: SimpleNamespace) -> int:
    from mlflow.exceptions import MlflowException

    from audio_wgan.command import UserError
    from storage import registry

    reason = " ".join(args.reason.split())
    if not reason:
        raise UserError("--reason must say why (it is recorded on the version)")
    if not args.alias or not all(c.isalnum() or c in "_-" for c in args.alias):
        raise UserError(f"--alias {args.alias[:40]!r}: letters, digits, '_' and '-' only")
    try:
        c = registry.client()
        c.get_model_version(args.name, str(args.version))
        registry.set_alias(args.name, args.alias, args.version)
        for key, value in (("promotion_decision", f"{args.alias} (by hand)"),
                           ("promotion_reason", f"set by hand: {reason}"[:500])):
            c.set_model_version_tag(args.name, str(args.version), key, value)
    except registry.RegistryError as exc:
        raise UserError(str(exc)) from None
    except MlflowException as exc:
        text = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise UserError(f"cannot promote {args.name} version {args.version}: {text}"
                        ) from None
    print(f"{args.name} v{args.version} -> @{args.alias} (set by hand: {reason})")
    return 0
