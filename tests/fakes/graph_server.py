"""A small local HTTP server that speaks Meta's Graph API for WhatsApp Cloud, for tests.

It answers `POST /{version}/{phone_number_id}/messages` as Graph does. A valid text or template
message gets `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}],
"messages": [{"id": "wamid..."}]}`; a message may address a business-scoped user id
(`recipient`) instead of a phone number (`to`), and may quote one (`context.message_id`).
A missing or wrong bearer token gets HTTP 401 with error 190. An unknown version or phone
number id, or a malformed message, gets HTTP 400 with error 100.

Templates registered with `add_template` (Graph's own definition format) are checked as Graph
checks them: an unknown name or language is 132001, a paused template 132015, a disabled one
132016; the body's parameter count (132000), positional versus named parameters and their names
(132012), the header's type and each button's index and type (132012, 132000 when a required
one is missing) must match the definition. `GET /{version}/{waba_id}/message_templates` lists
them, paged (`limit`, `after`, `paging.next`) with Graph's fields.

Media registered with `add_media` is served the way Graph serves received media:
`GET /{version}/{media_id}` answers `{url, mime_type, sha256, file_size, id}`, and that URL
answers the bytes, both only with the bearer token. `GET /{version}/{phone_number_id}` and
`GET /{version}/{waba_id}` answer the number and the account (`id`, `display_phone_number`,
`verified_name` / `name`) to its own token (`add_number` adds other businesses' numbers), which
is how SHVYA proves a company owns its number; to any other token it is error 100, as Graph
answers an object a token cannot see.
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
import hashlib
import itertools
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

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
    132012: (400, "Parameter format does not match format in the created template", "mismatch"),
    132015: (400, "Template is Paused", "The template has been paused due to low quality."),
    132016: (400, "Template is Disabled", "The template has been paused too many times."),
    131049: (
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131031: (400, "Business Account locked", "The business account has been locked."),
    131042: (400, "Business eligibility payment issue", "Payment method problem."),
    131057: (500, "Account in maintenance mode", "The account is in maintenance mode."),
}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_BSUID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}$")


@dataclass(frozen=True)
class GraphFault:
    """Answer with Graph's error object for `code` (HTTP status as Meta sends it, or `status`),
    with Graph's `is_transient` flag when given."""

    code: int
    status: int | None = None
    is_transient: bool | None = None


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


def error_body(code: int, is_transient: bool | None = None) -> dict[str, Any]:
    _, title, details = ERRORS.get(code, (400, "Unknown error", "An unknown error occurred."))
    error: dict[str, Any] = {
        "message": f"(#{code}) {title}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "A" + secrets.token_hex(10),
    }
    if is_transient is not None:
        error["is_transient"] = is_transient
    return {"error": error}


@dataclass
class TemplateDef:
    """A template as Graph's `message_templates` edge returns it."""

    id: str
    name: str
    language: str
    components: list[dict[str, Any]]
    status: str = "APPROVED"
    category: str = "MARKETING"
    parameter_format: str = "POSITIONAL"
    quality: str = "GREEN"

    def graph_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "parameter_format": self.parameter_format,
            "quality_score": {"score": self.quality},
            "components": self.components,
        }

    def part(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.components if c.get("type") == kind), None)


@dataclass
class MediaFile:
    id: str
    data: bytes
    mime_type: str


def _placeholders(text: str) -> list[str]:
    seen: list[str] = []
    for name in _PLACEHOLDER.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


def _check_text_params(
    definition_text: str, params: list[dict[str, Any]], named: bool, part: str
) -> tuple[int, str] | None:
    wanted = _placeholders(definition_text)
    if len(params) != len(wanted):
        return (
            132000,
            f"{part}: number of parameters ({len(params)}) does not match ({len(wanted)})",
        )
    for p in params:
        if p.get("type") != "text" or not p.get("text"):
            return 132012, f"{part}: parameters must be non-empty text"
    names = [p.get("parameter_name") for p in params]
    if named:
        if sorted(str(n) for n in names) != sorted(wanted):
            return 132012, f"{part}: named parameters {names} do not match {wanted}"
    elif any(n is not None for n in names):
        return 132012, f"{part}: the template takes positional parameters"
    return None


def check_template(tpl: TemplateDef, components: list[dict[str, Any]]) -> tuple[int, str] | None:
    """Graph's verdict on a template send's components: (error code, details), or None."""
    named = tpl.parameter_format.upper() == "NAMED"
    sent = {c.get("type"): c for c in components if c.get("type") in ("header", "body")}
    body = tpl.part("BODY") or {"text": ""}
    problem = _check_text_params(
        str(body.get("text", "")), sent.get("body", {}).get("parameters", []), named, "body"
    )
    if problem:
        return problem
    header = tpl.part("HEADER")
    header_params = sent.get("header", {}).get("parameters", [])
    if header is None:
        if "header" in sent:
            return 132000, "header: the template has no header"
    elif header.get("format", "TEXT") == "TEXT":
        problem = _check_text_params(str(header.get("text", "")), header_params, named, "header")
        if problem:
            return problem
    else:
        media = str(header["format"]).lower()
        if len(header_params) != 1 or header_params[0].get("type") != media:
            return 132012, f"header: expected one {media} parameter"
        obj = header_params[0].get(media)
        if not isinstance(obj, dict) or not (obj.get("link") or obj.get("id")):
            return 132012, f"header: the {media} needs a link or an id"
    buttons = (tpl.part("BUTTONS") or {}).get("buttons", [])
    given: dict[int, dict[str, Any]] = {}
    for component in components:
        if component.get("type") != "button":
            continue
        try:
            index = int(component.get("index"))
        except (TypeError, ValueError):
            return 132012, "button: index must be a number"
        if not 0 <= index < len(buttons):
            return 132012, f"button {index}: the template has no such button"
        kind = str(buttons[index].get("type", "")).lower()
        if component.get("sub_type") != kind:
            return 132012, f"button {index}: sub_type {component.get('sub_type')!r} is not {kind}"
        params = component.get("parameters") or []
        expected = {"url": "text", "copy_code": "coupon_code", "quick_reply": "payload"}.get(kind)
        if len(params) != 1 or params[0].get("type") != expected or not params[0].get(expected):
            return 132012, f"button {index}: expected one {expected} parameter"
        given[index] = component
    for index, button in enumerate(buttons):
        kind = str(button.get("type", "")).upper()
        needs = kind == "COPY_CODE" or (kind == "URL" and _placeholders(str(button.get("url"))))
        if needs and index not in given:
            return 132000, f"button {index} ({kind.lower()}) needs a parameter"
    return None


def _invalid(body: Any) -> str | None:
    """Why Graph would refuse this message body with error 100, or None."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    to, user = body.get("to"), body.get("recipient")
    if to is None and isinstance(user, str) and _BSUID.match(user):
        pass  # a business-scoped user id
    elif not isinstance(to, str) or not re.fullmatch(r"\+?\d{6,15}", to):
        return "to must be a phone number (or recipient a business-scoped user id)"
    context = body.get("context")
    if context is not None and (not isinstance(context, dict) or not context.get("message_id")):
        return "context.message_id is required in a context"
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
        waba_id: str = "102290129340398",
    ) -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.version = version
        self.waba_id = waba_id
        # Numbers and WABAs by id, with the token each is shown to (more: `add_number`).
        self.owners: dict[str, tuple[str, str]] = {
            phone_number_id: (token, "number"),
            waba_id: (token, "waba"),
        }
        self.templates: dict[tuple[str, str], TemplateDef] = {}
        self.media: dict[str, MediaFile] = {}
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

    def add_template(
        self,
        name: str,
        language: str,
        components: list[dict[str, Any]],
        *,
        status: str = "APPROVED",
        parameter_format: str = "POSITIONAL",
        category: str = "MARKETING",
    ) -> TemplateDef:
        """Define a template the way WhatsApp Manager stores it."""
        tpl = TemplateDef(
            str(10**15 + len(self.templates) + 1),
            name,
            language,
            components,
            status,
            category,
            parameter_format,
        )
        self.templates[(name, language)] = tpl
        return tpl

    def add_number(self, phone_number_id: str, token: str, waba_id: str | None = None) -> None:
        """Another business's number (and WABA) on this Graph, shown only to its own token."""
        self.owners[phone_number_id] = (token, "number")
        if waba_id is not None:
            self.owners[waba_id] = (token, "waba")

    def add_media(self, data: bytes, mime_type: str) -> MediaFile:
        """A file a customer sent: its media id for the webhook, its bytes for the download."""
        media = MediaFile(str(10**15 + 500 + len(self.media)), data, mime_type)
        self.media[media.id] = media
        return media

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
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and len(parts) == 2 and parts[0] == self.version:
            found = self._object(parts[1], request.headers.get("Authorization", ""))
            if found is not None:
                return found
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            if request.path.startswith("/download/"):
                return web.Response(status=401, text="Unauthorized")
            return self._error(190, 401, "Invalid OAuth access token - Cannot parse access token")
        if request.method == "GET":
            return self._read(request)
        expected = f"/{self.version}/{self.phone_number_id}/messages"
        if request.method != "POST" or request.path != expected:
            return self._error(100, 400, f"Unknown path components: {request.path}")
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
            body = error_body(action.code, action.is_transient)
            record.answer = body
            status = action.status or ERRORS.get(action.code, (400, "", ""))[0]
            return web.json_response(body, status=status)
        problem = _invalid(record.body)
        if problem is not None:
            return self._error(100, 400, problem)
        if record.body.get("type") == "template" and self.templates:
            refusal = self._template_refusal(record.body["template"])
            if refusal is not None:
                code, details = refusal
                body = error_body(code)
                body["error"]["error_data"]["details"] = details
                record.answer = body
                return web.json_response(body, status=ERRORS[code][0])
        wamid = f"wamid.HBgL{next(self._ids):06d}{secrets.token_hex(8).upper()}"
        record.wamid = wamid
        to = record.body.get("to")
        contact = (
            {"input": to, "wa_id": to.removeprefix("+")}
            if to
            else {"input": record.body["recipient"], "user_id": record.body["recipient"]}
        )
        answer: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": wamid}],
        }
        if record.body.get("type") == "template":
            answer["messages"][0]["message_status"] = "accepted"
        record.answer = answer
        return web.json_response(answer)

    def _template_refusal(self, template: dict[str, Any]) -> tuple[int, str] | None:
        tpl = self.templates.get((template["name"], template["language"]["code"]))
        if tpl is None:
            return 132001, f"template name ({template['name']}) does not exist in the language"
        if tpl.status == "PAUSED":
            return 132015, f"template {tpl.name} is paused"
        if tpl.status == "DISABLED":
            return 132016, f"template {tpl.name} is disabled"
        if tpl.status != "APPROVED":
            return 132001, f"template {tpl.name} is {tpl.status}"
        return check_template(tpl, list(template.get("components") or []))

    def _read(self, request: web.Request) -> web.StreamResponse:
        """GET: the phone number or WABA object, a template list, a media object, or a media
        file."""
        parts = request.path.strip("/").split("/")
        if parts[0] == "download" and len(parts) == 2 and parts[1] in self.media:
            media = self.media[parts[1]]
            return web.Response(body=media.data, content_type=media.mime_type)
        if len(parts) == 3 and parts[0] == self.version and parts[2] == "message_templates":
            if parts[1] != self.waba_id:
                return self._error(100, 400, f"Unknown WhatsApp Business Account {parts[1]}")
            return self._template_page(request)
        if len(parts) == 2 and parts[0] == self.version and parts[1] in self.media:
            media = self.media[parts[1]]
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{self.base_url}/download/{media.id}",
                    "mime_type": media.mime_type,
                    "sha256": hashlib.sha256(media.data).hexdigest(),
                    "file_size": len(media.data),
                    "id": media.id,
                }
            )
        return self._error(100, 400, f"Unsupported get request: {request.path}")

    def _object(self, object_id: str, authorization: str) -> web.Response | None:
        """A number or WABA: shown to its own token; to another known token it is an object
        that cannot be loaded (100), as Graph answers; None for ids it does not hold."""
        tokens = {token for token, _ in self.owners.values()}
        if authorization.removeprefix("Bearer ") not in tokens:
            return None  # the token check answers 190
        owner = self.owners.get(object_id)
        if owner is None or authorization != f"Bearer {owner[0]}":
            if object_id in self.media:
                return None
            return self._error(
                100,
                400,
                f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot"
                " be loaded due to missing permissions, or does not support this operation",
            )
        if owner[1] == "waba":
            return web.json_response({"name": "Test Business", "id": object_id})
        return web.json_response(
            {
                "verified_name": "Test Business",
                "display_phone_number": "+1 555-010-0000",
                "id": object_id,
            }
        )

    def _template_page(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "25"))
        start = int(request.query.get("after", "0") or 0)
        listed = list(self.templates.values())
        page = listed[start : start + limit]
        body: dict[str, Any] = {
            "data": [t.graph_object() for t in page],
            "paging": {"cursors": {"before": str(start), "after": str(start + len(page))}},
        }
        if start + limit < len(listed):
            query = urlencode({**request.query, "after": str(start + limit)})
            body["paging"]["next"] = f"{self.base_url}{request.path}?{query}"
        return web.json_response(body)

    @staticmethod
    def _error(code: int, status: int, message: str) -> web.Response:
        body = error_body(code)
        body["error"]["message"] = f"(#{code}) {message}"
        return web.json_response(body, status=status)
