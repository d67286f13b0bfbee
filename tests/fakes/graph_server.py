"""A small local HTTP server that speaks Meta's Graph API for WhatsApp Cloud sends, for tests.

It answers `POST /{version}/{phone_number_id}/messages` as Graph does. A valid text or template
message gets `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}],
"messages": [{"id": "wamid..."}]}`. A missing or wrong bearer token gets HTTP 401 with error 190.
An unknown version or phone number id, or a malformed message, gets HTTP 400 with error 100.
Every request is recorded (path, headers, JSON body, arrival time), so a test can check it field
by field. Scripted actions make the next requests fail the way Graph does:

- `GraphFault(131047)`: that code's Graph error object, with the HTTP status Meta uses for it;
- `ServerError(502)`: a non-JSON error page;
- `Slow(seconds)`: answer late (normally, or with the next scripted fault);
- `Drop()`: close the connection without an answer.

`delay` slows every answer, for tests that need a send to stay in flight. The server runs in
the test's event loop, and service processes reach it over TCP at `base_url`.

    async with FakeGraph(token="t0k", phone_number_id="1055") as graph:
        graph.script(GraphFault(131047))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

# Titles and details as Graph phrases them; the code is what clients act on.
ERRORS: dict[int, tuple[int, str, str]] = {
    1: (500, "API Unknown", "Invalid request or possible server error."),
    2: (503, "API Service", "Temporary due to downtime or due to being overloaded."),
    4: (400, "Application request limit reached", "The app has reached its API call rate limit."),
    100: (400, "Invalid parameter", "A parameter is missing or invalid."),
    190: (401, "Error validating access token: Session has expired", "Access token expired."),
    368: (
        400,
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account is restricted for violating a platform policy.",
    ),
    80007: (400, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    130429: (
        400,
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time",
    ),
    131000: (500, "Something went wrong", "Message failed to send due to an unknown error."),
    131016: (503, "Service unavailable", "A service is temporarily unavailable."),
    131026: (400, "Message Undeliverable", "Message failed to send."),
    131047: (
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131048: (
        400,
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be "
        "sent from this phone number.",
    ),
    131050: (
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business",
        "User stopped marketing.",
    ),
    131051: (400, "Unsupported message type", "Message type is not currently supported."),
    131056: (
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
    132000: (
        400,
        "Number of parameters does not match the expected number of params",
        "body: number of localizable_params (0) does not match the expected number of params (1)",
    ),
    133004: (503, "Server temporarily unavailable", "The server is temporarily unavailable."),
    132001: (
        404,
        "Template name does not exist in the translation",
        "template name (x) does not exist in en_US",
    ),
}


@dataclass(frozen=True)
class GraphFault:
    """Answer with Graph's error object for `code` (HTTP status as Meta sends it, or `status`)."""

    code: int
    status: int | None = None


@dataclass(frozen=True)
class ServerError:
    """Answer with an HTML error page, as a load balancer in front of Graph does."""

    status: int = 502


@dataclass(frozen=True)
class Slow:
    """Wait this long before answering (a success, or `then`)."""

    seconds: float
    then: GraphFault | ServerError | None = None


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Action = GraphFault | ServerError | Slow | Drop


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: datetime
    status: int = 0
    answer: Any = None
    wamid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def error_body(code: int) -> dict[str, Any]:
    _, title, details = ERRORS[code]
    return {
        "error": {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "A" + secrets.token_hex(10),
        }
    }


def _invalid(body: Any) -> str | None:
    """Why Graph would refuse this message body with error 100, or None."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    if not isinstance(body.get("to"), str) or not re.fullmatch(r"\+?\d{6,15}", body["to"]):
        return "to must be a phone number"
    kind = body.get("type", "text")
    if kind == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
            return "text.body is required"
        if len(text["body"]) > 4096:
            return "text.body is longer than 4096 characters"
        return None
    if kind == "template":
        template = body.get("template")
        if not isinstance(template, dict) or not isinstance(template.get("name"), str):
            return "template.name is required"
        language = template.get("language")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            return "template.language.code is required"
        for component in template.get("components", []):
            for parameter in component.get("parameters", []):
                if parameter.get("type") == "text" and not parameter.get("text"):
                    return "a text parameter is empty"
        return None
    return f"type {kind!r} is not supported here"


class FakeGraph:
    """The server; start it with `async with` or `start()` / `close()`."""

    def __init__(
        self,
        *,
        token: str = "graph-test-token",
        phone_number_id: str = "106540352242922",
        version: str = "v23.0",
    ) -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.version = version
        self.delay = 0.0
        self.requests: list[RecordedRequest] = []
        self._script: deque[Action] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeGraph:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def script(self, *actions: Action) -> None:
        """The next requests get these answers, in order; later ones succeed."""
        self._script.extend(actions)

    @property
    def sent(self) -> list[RecordedRequest]:
        """Requests Graph accepted (it returned a wamid for them)."""
        return [r for r in self.requests if r.wamid is not None]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        record = RecordedRequest(
            request.method, request.path, dict(request.headers), body, datetime.now(UTC)
        )
        self.requests.append(record)
        response = await self._answer(request, record)
        record.status = response.status
        return response

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        expected = f"/{self.version}/{self.phone_number_id}/messages"
        if request.method != "POST" or request.path != expected:
            return self._error(100, 400, f"Unknown path components: {request.path}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(190, 401, "Invalid OAuth access token - Cannot parse access token")
        if not request.content_type == "application/json":
            return self._error(100, 400, "Content-Type must be application/json")
        action = self._script.popleft() if self._script else None
        if isinstance(action, Slow):
            await asyncio.sleep(action.seconds)
            action = action.then
        if isinstance(action, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=499)
        if isinstance(action, ServerError):
            return web.Response(
                status=action.status,
                text="<html><body>Bad Gateway</body></html>",
                content_type="text/html",
            )
        if isinstance(action, GraphFault):
            body = error_body(action.code)
            record.answer = body
            return web.json_response(body, status=action.status or ERRORS[action.code][0])
        problem = _invalid(record.body)
        if problem is not None:
            return self._error(100, 400, problem)
        wamid = f"wamid.HBgL{next(self._ids):06d}{secrets.token_hex(8).upper()}"
        record.wamid = wamid
        to = record.body["to"]
        answer: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.removeprefix("+")}],
            "messages": [{"id": wamid}],
        }
        if record.body.get("type") == "template":
            answer["messages"][0]["message_status"] = "accepted"
        record.answer = answer
        return web.json_response(answer)

    @staticmethod
    def _error(code: int, status: int, message: str) -> web.Response:
        body = error_body(code)
        body["error"]["message"] = f"(#{code}) {message}"
        return web.json_response(body, status=status)
