"""A pure-ASGI fast path for `POST /inbound-message`, the route every lead's message takes.

The FastAPI route stays (it documents the API and answers every request this path declines);
this path only saves the per-request cost of the framework layers, which measured about 40% of
ingest's CPU under load. It reads the body, validates it with pydantic's JSON validator, and
calls the same `Ingest.accept`. A body that does not validate falls through to the FastAPI route
untouched, so bad input gets exactly the same 422 answers. It authenticates with the same
`Ingest.caller` as the route, and errors are answered with the same JSON bodies, statuses and
headers as the app's exception handlers (`FAST_PATH=false` turns it off; the API tests
run both ways).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import asyncpg
from fastapi import HTTPException
from pydantic import ValidationError

from shvya_common.db import is_outage
from shvya_ingest.api import (
    INTERNAL,
    OUTAGE_ERRORS,
    InboundMessage,
    Ingest,
    internal_error,
    refused_by_database,
    unavailable_body,
)
from shvya_ingest.auth import AuthError
from shvya_ingest.middleware import ASGIApp, Message, Receive, Scope, Send

ROUTE = SimpleNamespace(path="/inbound-message")
_JSON = [(b"content-type", b"application/json")]


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InboundFastPath:
    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/inbound-message"
            and _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = InboundMessage.model_validate_json(raw)
        except ValidationError:
            await self.app(scope, _replay(raw), send)  # FastAPI explains what is wrong
            return
        ingest: Ingest = self.fastapi_app.state.ingest
        scope["route"] = ROUTE
        try:
            caller = await ingest.caller(_header(scope, b"authorization"))
            accepted = await ingest.accept(body, caller)
        except AuthError as err:
            headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await _respond(send, err.status, json.dumps({"detail": err.reason}).encode(), headers)
            return
        except HTTPException as err:
            detail = json.dumps({"detail": err.detail}).encode()
            headers = [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
            await _respond(send, err.status_code, detail, headers)
            return
        except asyncpg.PostgresError as err:
            refused = refused_by_database(err)
            if refused is not None:
                await _respond(send, refused[0], json.dumps({"detail": refused[1]}).encode(), [])
                return
            if not is_outage(err):
                internal_error(err)
                await _respond(send, 500, json.dumps(INTERNAL).encode(), [])
                return
            await _respond(send, 503, unavailable_body(err), [(b"retry-after", b"5")])
            return
        except OUTAGE_ERRORS as err:
            await _respond(send, 503, unavailable_body(err), [(b"retry-after", b"5")])
            return
        except Exception as err:  # a bug: the same JSON 500 the app answers
            internal_error(err)
            await _respond(send, 500, json.dumps(INTERNAL).encode(), [])
            return
        await _respond(send, 200, accepted.model_dump_json().encode(), [])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _replay(raw: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
