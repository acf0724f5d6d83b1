"""`audio-wgan server start|stop|status`: one Prefect server that the flow commands reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import choice, option, ranged
from audio_wgan.prefect_server import COMMAND_SERVER_VAR, RECORD, answers, read_record
from gan.limits import PORT

DEFAULT_PORT = 4200  # Prefect's own default
START_TIMEOUT_S = 180.0  # a cold server migrates its database first; slow on a busy machine


def register(app: typer.Typer) -> None:
    app.command(
        "server",
        short_help="start, stop or show the Prefect server that precompute, train and run "
        "reuse",
        help="start: run `prefect server start --background` on 127.0.0.1:PORT and "
        f"record its URL in {RECORD}; while it answers, precompute, train and run send "
        "their flow runs to it instead of starting a Prefect server for each command "
        f"(~5 s; Prefect's temporary server with {COMMAND_SERVER_VAR}=0, ~8 s). A "
        "PREFECT_API_URL in the environment or the Prefect profile wins over it. stop: "
        "`prefect server stop` and forget it. status: its URL and whether "
        "it answers (exit 2 when it does not).",
    )(command)


def command(
    action: Annotated[str, typer.Argument(
        **{**choice("start", "stop", "status"), "metavar": "ACTION"}, show_default=False,
        help="start, stop or status")],
    port: Annotated[int, option("--port", parser=ranged(PORT, "--port"), metavar="N",
                                help=f"port for start, 1..65535 (default {DEFAULT_PORT})")
                    ] = DEFAULT_PORT,
) -> int:
    return dispatch("server", run, locals())


def prefect_cli() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError

    doc = read_record()
    if args.action == "status":
        if doc is None:
            raise UserError(f"no server recorded in {RECORD} (audio-wgan server start)")
        if not answers(doc["url"]):
            raise UserError(f"the recorded Prefect server {doc['url']} does not answer")
        print(f"Prefect server {doc['url']} answers (UI: {doc['url'].removesuffix('/api')})")
        return 0
    if args.action == "stop":
        return stop(doc)
    return start(args.port, doc)


def start(port: int, doc: dict[str, str] | None) -> int:
    from audio_wgan.command import UserError

    if doc is not None and answers(doc["url"]):
        print(f"Prefect server {doc['url']} already answers")
        return 0
    url = f"http://127.0.0.1:{port}/api"
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([prefect_cli(), "server", "start", "--background", "--host",
                          "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        raise UserError(f"prefect server start failed: {' '.join(lines[-1].split())}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(url):  # waiting for readiness: the server migrates its database
        if time.monotonic() > deadline:
            subprocess.run([prefect_cli(), "server", "stop"], env=env, capture_output=True)
            raise UserError(f"the Prefect server on port {port} did not answer within "
                            f"{START_TIMEOUT_S:.0f} s; stopped it")
        time.sleep(0.5)
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "prefect_home": home}))
    tmp.replace(RECORD)
    print(f"Prefect server {url} started (UI: {url.removesuffix('/api')}); recorded in "
          f"{RECORD}")
    return 0


def stop(doc: dict[str, str] | None) -> int:
    from audio_wgan.command import UserError

    if doc is None:
        raise UserError(f"no server recorded in {RECORD}")
    env = {**os.environ, "PREFECT_HOME": doc.get("prefect_home") or os.environ.get(
        "PREFECT_HOME", str(Path.home() / ".prefect"))}
    subprocess.run([prefect_cli(), "server", "stop"], env=env, capture_output=True)
    RECORD.unlink(missing_ok=True)
    print(f"Prefect server {doc['url']} stopped")
    return 0
