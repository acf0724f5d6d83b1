"""What stands between a request and MLflow's scoring server: bounded, strict, and silent
about internals.

`mlflow models serve` answers a bad request with a `stack_trace` field (server paths and
code), takes bodies of any size and nesting (100,000 nested `[` raised a RecursionError:
500), reads CSV, and turns `"return_mel": "yes"` or `"count": NaN` into values before the
model can refuse them. `guard(app)` wraps MLflow's own ASGI app (`scoring_server.init`), so
the model, its signature and MLflow's request formats stay as they are, and:

- refuses a body over MAX_BODY_BYTES (413) and a content type other than JSON (415);
- parses the JSON itself first: NaN/Infinity, nesting deeper than MAX_DEPTH, and in
  `dataframe_records` / `dataframe_split` rows a `return_mel` that is not a JSON boolean,
  or a `count` / `seed` that is not a JSON integer, are a 400 with a one-line message;
- drops `stack_trace` from every error MLflow answers (the message stays).

Pure Python over the ASGI interface (no FastAPI import of its own), so it is tested
without a server and runs in front of any ASGI app.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # a request names classes and counts: 1 MiB is thousands of rows
MAX_DEPTH = 8  # {"dataframe_records": [{"class": ...}]} is 3 deep
STRICT = {"return_mel": bool, "count": int, "seed": int}  # JSON type each must have
GUARDED_PATHS = ("/invocations",)


class Refused(ValueError):
    """A request the guard answers itself: (status, one-line message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _no_constant(name: str) -> Any:
    raise Refused(400, f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: JSON allows the digits, not the infinity
        raise Refused(400, f"{text[:40]} is not a finite number")
    return value


def depth(x: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed JSON, stopping once past `limit`."""
    level, todo = 0, [(x, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, dict | list):
            level = max(level, d)
            if level > limit:
                return level
            todo.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return level


def check_size(n_bytes: int) -> None:
    """Refused (413) past MAX_BODY_BYTES: checked as the body arrives, so it is bounded."""
    if n_bytes > MAX_BODY_BYTES:
        raise Refused(413, f"the request body is over {MAX_BODY_BYTES} bytes")


def check_body(body: bytes, content_type: str) -> None:
    """Refused (status, message) for a body the model must never see."""
    check_size(len(body))
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise Refused(415, 'send Content-Type: application/json, e.g. {"dataframe_records": '
                           '[{"class": "siren", "count": 2}]}')
    try:
        doc = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise Refused(400, f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(400, f"the body is not JSON ({' '.join(str(exc).split())[:120]})"
                      ) from None
    if depth(doc) > MAX_DEPTH:
        raise Refused(400, f"the JSON is nested deeper than {MAX_DEPTH} levels")
    for i, row in enumerate(_rows(doc)):
        for key, kind in STRICT.items():
            if key in row and row[key] is not None and not _is(row[key], kind):
                want = "true or false" if kind is bool else "an integer"
                raise Refused(400, f"row {i}: {key} must be {want}, not {row[key]!r:.40}")


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _rows(doc: Any) -> list[dict[str, Any]]:
    """The request's rows as dicts, for every format MLflow reads them from
    (`dataframe_records`, `dataframe_split`, `instances`, `inputs`: records or columns)."""
    if not isinstance(doc, dict):
        return []
    rows: list[dict[str, Any]] = []
    for key in ("dataframe_records", "instances", "inputs"):
        value = doc.get(key)
        if isinstance(value, list):
            rows += [r for r in value if isinstance(r, dict)]
        elif isinstance(value, dict):  # columns: {"class": [...], "count": [...]}
            columns = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
            n = max((len(v) for v in columns.values()), default=0)
            rows += [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(n)]
    split = doc.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list):
        cols = split["columns"]
        data = split.get("data") if isinstance(split.get("data"), list) else []
        rows += [dict(zip(cols, r, strict=False)) for r in data if isinstance(r, list)]
    return rows


def without_stack_trace(body: bytes) -> bytes:
    """An error body with its `stack_trace` field dropped (other bodies as they are)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and "stack_trace" in doc:
        doc.pop("stack_trace")
        return json.dumps(doc).encode()
    return body


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR",
                       "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def guard(app: ASGIApp) -> ASGIApp:
    """`app` behind the checks of the module docstring."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body = b""
        if scope.get("path") in GUARDED_PATHS and scope.get("method") == "POST":
            types = [v for k, v in scope.get("headers") or [] if k.lower() == b"content-type"]
            try:
                while True:
                    msg = await receive()
                    body += msg.get("body", b"")
                    check_size(len(body))
                    if not msg.get("more_body"):
                        break
                if len(types) > 1:
                    raise Refused(400, "the request has more than one Content-Type header")
                check_body(body, (types[0] if types else b"").decode("latin-1"))
            except Refused as exc:
                await _answer(send, exc.status, str(exc))
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()  # a disconnect, if the client goes
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            inner_receive: Receive = replay
        else:
            inner_receive = receive
        await app(scope, inner_receive, _scrubbing(send))

    return guarded


def _scrubbing(send: Send) -> Send:
    """A `send` that holds an error response's body and sends it without `stack_trace`."""
    state: dict[str, Any] = {"start": None, "chunks": []}

    async def scrub(msg: Message) -> None:
        if msg["type"] == "http.response.start" and int(msg.get("status", 200)) >= 400:
            state["start"] = msg
            return
        if msg["type"] == "http.response.body" and state["start"] is not None:
            state["chunks"].append(msg.get("body", b""))
            if msg.get("more_body"):
                return
            body = without_stack_trace(b"".join(state["chunks"]))
            start = dict(state["start"])
            start["headers"] = [(k, v) for k, v in start.get("headers", [])
                                if k.lower() != b"content-length"]
            start["headers"].append((b"content-length", str(len(body)).encode()))
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        await send(msg)

    return scrub
