"""The live stream: server-sent events for the caller's company (a console session, or an
admin or agent key), fed by the live hub (`shvya_ingest.live`).

    GET /v1/stream          text/event-stream

    event: hello    data: {"company_id", "reconnect_ms"}    first, on every (re)connect
    event: events   data: LiveNotice                      events were written: re-read these
    event: resync   data: {"reason"}                      notices may be lost: re-read all
    event: bye      data: {"reason"}                      the stream ends: signed_out, revoked,
                                                           time, restart
    : keep-alive                                           a comment every KEEPALIVE_SECONDS

A page re-reads what it shows on `hello` and `resync`, so a dropped connection, an ingest
restart or a NATS outage never leaves it stale; it never reads data from the stream itself.
The stream ends after CONSOLE_STREAM_SECONDS (the browser reconnects by itself), when the
credential behind it stops being valid (a session signed out or expired, a user disabled, an API
key revoked: within a second when this process made the change, within RECHECK_SECONDS plus the
key cache otherwise), and within a second of ingest being stopped (so a stop never waits on open
consoles).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shvya_ingest.auth import SESSION_COOKIE, AgentCompany, AuthError, PrincipalDep
from shvya_ingest.live import Resync
from shvya_ingest.middleware import RouteLimits
from shvya_ingest.settings import IngestSettings
from shvya_ingest.v1.common import ERRORS, V1, IngestDep

router = APIRouter(prefix="/v1", dependencies=V1, tags=["live stream"], responses=ERRORS)

KEEPALIVE_SECONDS = 15.0
WAKE_SECONDS = 1.0
RECHECK_SECONDS = 10.0
RECONNECT_MS = 1500
PATH = "/v1/stream"


def route_limits(settings: IngestSettings) -> RouteLimits:
    """The stream outlives the request deadline; it ends itself a little before this one."""
    return RouteLimits(
        re.compile(rf"^{re.escape(PATH)}$"),
        settings.max_body_bytes,
        settings.console_stream_seconds + 30,
    )


def frame(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@router.get(
    "/stream",
    # Left out of the OpenAPI document: generated clients (and the schema fuzzer) would wait
    # on it forever. Documented in docs/console.md.
    include_in_schema=False,
)
async def stream(
    request: Request, company_id: AgentCompany, caller: PrincipalDep, ingest: IngestDep
) -> StreamingResponse:
    hub = ingest.live
    auth = ingest.auth
    token = request.cookies.get(SESSION_COOKIE) if caller.kind == "session" else None
    authorization = request.headers.get("authorization") if caller.kind == "key" else None
    limit = ingest.settings.console_stream_seconds

    async def still_valid() -> str | None:
        """Why the stream's credential no longer holds; None while it does."""
        if token is not None:
            return None if await auth.session(token) is not None else "signed_out"
        if authorization is not None:
            try:
                await auth.authenticate(authorization)
            except AuthError:
                return "revoked"
        return None

    server = getattr(request.app.state, "server", None)

    def stopping() -> bool:
        return bool(server is not None and server.should_exit)

    async def events() -> AsyncIterator[bytes]:
        started = time.monotonic()
        checked = quiet = started
        generation = auth.generation
        with hub.listen(company_id) as listener:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            yield frame("hello", {"company_id": company_id, "reconnect_ms": RECONNECT_MS})
            while True:
                now = time.monotonic()
                if stopping():
                    yield frame("bye", {"reason": "restart"})
                    return
                if now - started > limit:
                    yield frame("bye", {"reason": "time"})
                    return
                if now - checked > RECHECK_SECONDS or auth.generation != generation:
                    checked, generation = now, auth.generation
                    reason = await still_valid()
                    if reason is not None:
                        yield frame("bye", {"reason": reason})
                        return
                try:
                    item = await asyncio.wait_for(listener.queue.get(), WAKE_SECONDS)
                except TimeoutError:
                    if now - quiet > KEEPALIVE_SECONDS:
                        quiet = now
                        yield b": keep-alive\n\n"
                    continue
                quiet = now
                if isinstance(item, Resync):
                    yield frame("resync", {"reason": item.reason})
                else:
                    yield frame("events", item.model_dump(mode="json"))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
