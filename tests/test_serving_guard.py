"""`audio-wgan serve`: MLflow's scoring server behind `storage.serving_guard`. Hostile
payloads (CSV, 100,000 nested brackets, NaN, loosely typed fields, a huge body) are a
4xx with a one-line message, and no response ever carries a stack trace."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_services import free_port, http_server
from registry_fixtures import make_bundle, register_bundle

from storage import registry
from storage.serving_guard import MAX_BODY_BYTES, MAX_DEPTH, Refused, check_body

ROOT = Path(__file__).resolve().parents[1]
JSON = "application/json"


def _send(url: str, body: bytes, ctype: str = JSON) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.parametrize("body, ctype, status, message", [
    (b"class,count\nbeep,1\n", "text/csv", 415, "send Content-Type: application/json"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, 400, f"nested deeper than {MAX_DEPTH} levels"),
    (b'{"dataframe_records": [{"class": "beep", "count": NaN}]}', JSON, 400,
     "NaN is not a number JSON allows"),
    (b'{"dataframe_records": [{"class": "beep", "return_mel": "yes"}]}', JSON, 400,
     "row 0: return_mel must be true or false, not 'yes'"),
    (b'{"dataframe_records": [{"class": "beep", "count": 2.0}]}', JSON, 400,
     "row 0: count must be an integer, not 2.0"),
    (b'{"dataframe_split": {"columns": ["class", "seed"], "data": [["beep", true]]}}', JSON,
     400, "row 0: seed must be an integer, not True"),
    (b"{not json", JSON, 400, "the body is not JSON"),
    (b'{"dataframe_records": [{"class": "beep", "seed": 1e400}]}', JSON, 400,
     "1e400 is not a finite number"),
    (b'{"instances": [{"class": "beep", "return_mel": 1}]}', JSON, 400,
     "row 0: return_mel must be true or false, not 1"),
    (b'{"inputs": {"class": ["beep", "hum"], "count": [1, "2"]}}', JSON, 400,
     "row 1: count must be an integer, not '2'"),
    (b" " * (MAX_BODY_BYTES + 1), JSON, 413, "the request body is over"),
])
def test_the_guard_refuses(body: bytes, ctype: str, status: int, message: str) -> None:
    with pytest.raises(Refused) as e:
        check_body(body, ctype)
    assert e.value.status == status and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture
def guarded(tmp_path: Path, mlflow_uri: str) -> Iterator[str]:
    """`audio-wgan serve` of a registered tiny champion on a free loopback port."""
    version = register_bundle(make_bundle(tmp_path / "bundle"))
    registry.set_alias("audio-wgan", registry.CHAMPION, version)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=mlflow_uri, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    with http_server([sys.executable, "-m", "audio_wgan.cli", "serve", "--port", str(port)],
                     port, env, tmp_path, "audio-wgan serve") as url:
        yield url


@pytest.mark.integration
def test_served_requests_are_bounded_strict_and_never_leak_a_stack_trace(guarded: str
                                                                          ) -> None:
    url = f"{guarded}/invocations"
    status, body = _send(url, json.dumps(
        {"dataframe_records": [{"class": "beep", "count": 2, "seed": 7}]}).encode())
    assert status == 200 and len(body["predictions"]) == 2, body
    hostile = [
        (b"class,count\nbeep,1\n", "text/csv", 415),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400),
        (b'{"dataframe_records": [{"class": "beep", "count": NaN}]}', JSON, 400),
        (b'{"dataframe_records": [{"class": "beep", "return_mel": "yes"}]}', JSON, 400),
        (b'{"dataframe_records": [{"class": "meow"}]}', JSON, 400),  # the model refuses
        (b'{"inputs": {"nested": {"deep": 1}}}', JSON, 400),  # MLflow refuses
        (b" " * (MAX_BODY_BYTES + 10), JSON, 413),
    ]
    for payload, ctype, want in hostile:
        status, body = _send(url, payload, ctype)
        assert status == want, (payload[:60], status, body)
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body), body
        assert body.get("message"), body


def test_the_guard_reads_a_chunked_body_and_passes_lifespan_through() -> None:
    """A body in several ASGI messages is read whole (and bounded) before the app sees it,
    replayed to it in one; lifespan and other paths go straight through; an error body
    from the app loses its stack_trace and gets the right length."""
    import asyncio

    from storage.serving_guard import guard

    seen: list[tuple[str, bytes]] = []

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        if scope["type"] == "lifespan":
            seen.append(("lifespan", b""))
            return
        msg = await receive()
        seen.append((scope["path"], msg["body"]))
        body = json.dumps({"message": "bad", "stack_trace": "/srv/x.py line 1"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def call(scope: dict, chunks: list[bytes]) -> list[dict]:
        incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]
        out: list[dict] = []

        async def receive() -> dict:
            return incoming.pop(0)

        async def send(msg: dict) -> None:
            out.append(msg)

        asyncio.run(guard(app)(scope, receive, send))
        return out

    http = {"type": "http", "method": "POST", "path": "/invocations",
            "headers": [(b"content-type", b"application/json")]}
    out = call(http, [b'{"dataframe_records": ', b'[{"class": "beep"}]}'])
    assert seen[-1] == ("/invocations", b'{"dataframe_records": [{"class": "beep"}]}')
    body = out[-1]["body"]
    assert json.loads(body) == {"message": "bad"}
    assert dict(out[0]["headers"])[b"content-length"] == str(len(body)).encode()
    out = call(http, [b" " * (MAX_BODY_BYTES // 2)] * 3)  # over the bound: never passed on
    assert out[0]["status"] == 413 and seen[-1][0] == "/invocations" and len(seen) == 1
    call({"type": "lifespan"}, [])
    assert seen[-1] == ("lifespan", b"")
    two = {**http, "headers": [(b"content-type", b"application/json"),
                               (b"content-type", b"text/csv")]}
    assert call(two, [b"{}"])[0]["status"] == 400
