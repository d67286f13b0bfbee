"""Pure ASGI middleware (no per-request task overhead): body size limits, a request deadline
that answers 503 instead of hanging, and request latency metrics. Routes that need more (document
uploads) get their own limits through `RouteLimits`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from shvya_common.metrics import HTTP_SECONDS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = structlog.get_logger(__name__)


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class RouteLimits:
    """A body limit and a deadline for the paths `pattern` matches, instead of the defaults."""

    pattern: re.Pattern[str]
    max_body: int
    timeout: float


async def _send_json(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        webhook_max_body: int,
        timeout: float,
        routes: Sequence[RouteLimits] = (),
    ) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.max_body = max_body
        self.webhook_max_body = webhook_max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.webhook_max_body if path.startswith("/webhooks/") else self.max_body
        timeout = self.timeout
        for route in self.routes:
            if route.pattern.match(path):
                limit, timeout = route.max_body, route.timeout
                break
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await _send_json(send, 413, f"body larger than {limit} bytes", [])
                    self._observe(scope, 413, started)
                    return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
            await send(message)

        try:
            async with asyncio.timeout(timeout):
                await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not status_holder["started"]:
                await _send_json(send, 413, f"body larger than {limit} bytes", [])
                status_holder["status"] = 413
        except TimeoutError:
            log.warning("request_deadline_exceeded", path=path)
            if not status_holder["started"]:
                await _send_json(
                    send,
                    503,
                    "the request could not finish in time; retry later",
                    [(b"retry-after", b"5")],
                )
                status_holder["status"] = 503
        self._observe(scope, int(status_holder["status"]), started)

    @staticmethod
    def _observe(scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        HTTP_SECONDS.labels(scope.get("method", ""), template, str(status)).observe(
            time.perf_counter() - started
        )
