"""A small local HTTP server that speaks the OpenAI wire format, for tests.

It answers `POST /v1/chat/completions` (plain text, or JSON that fits a `json_schema`
response format) and `POST /v1/embeddings` (float or base64 vectors), checks the bearer key,
and records every request so a test can read the exact prompt a client sent. Scripted actions
make the next requests fail the way the real API does: an HTTP status with OpenAI's error body
(429, 500, 400, 401, ...), a response slower than the client's timeout, or a dropped
connection. The real `openai` SDK runs against it unchanged, in this process or in a service
process pointed at `base_url`.

    async with FakeOpenAI(api_key="sk-test") as server:
        server.script_chat(Fault(429), Fault(500))   # the next two chat calls fail
        client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)

Like a real provider it can be slow and have a rate limit: `latency` holds every chat answer
back that long, and with `max_in_flight` a chat call beyond that many at once is refused with
429 and a `Retry-After` header. It counts the chat calls in flight and their peak
(`in_flight`, `peak_in_flight`), which `GET /_fake/stats` also reports. `make bench` runs it as
its own process: `python -m tests.fakes.openai_server --port 8089 --latency 0.3`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_WORD = re.compile(r"\w+", re.UNICODE)
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("insufficient_permissions", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Fault:
    """Answer with this HTTP status and OpenAI's error body."""

    status: int
    message: str = ""
    retry_after: float | None = None
    # OpenAI's error code, when not the status's usual one (429 "insufficient_quota").
    code: str | None = None


@dataclass(frozen=True)
class Delay:
    """Hold the answer this long, then give up with 504: a timeout for a shorter client timeout."""

    seconds: float


@dataclass(frozen=True)
class Disconnect:
    """Close the connection without an answer."""


@dataclass(frozen=True)
class Content:
    """Answer a chat call with exactly this assistant text."""

    text: str
    finish_reason: str = "stop"


Action = Fault | Delay | Disconnect | Content


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    # What the server answered: an HTTP status, and the usage it reported if it answered 200.
    status: int = 200
    usage: dict[str, int] = field(default_factory=dict)
    # Seconds a scripted Delay held the answer back (the client may have given up by then).
    delayed: float = 0.0


def count_words(text: str) -> int:
    """The fake's token count: words, so tests can predict the usage it reports."""
    return len(_WORD.findall(text))


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector from hashed words: texts sharing words point alike."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


def sample_for_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A value that fits a JSON schema: what a model in strict structured-output mode returns."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return sample_for_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return sample_for_schema(options[0], defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample_for_schema(sub, defs) for name, sub in props.items()}
    if kind == "array":
        return [sample_for_schema(schema.get("items", {"type": "string"}), defs)]
    if kind == "string":
        return "sample text"
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class FakeOpenAI:
    """The server; start it with `async with` or `start()` / `close()`."""

    def __init__(self, api_key: str = "sk-test", *, default_dimensions: int = 1536) -> None:
        self.api_key = api_key
        self.default_dimensions = default_dimensions
        self.requests: list[RecordedRequest] = []
        # Overrides the default chat answer; gets the request body, returns the assistant text.
        self.chat_responder: Callable[[dict[str, Any]], str] | None = None
        self._chat_script: deque[Action] = deque()
        self._embed_script: deque[Action] = deque()
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # A provider's speed and rate limit (see the module docstring).
        self.latency = 0.0
        self.max_in_flight: int | None = None
        self.retry_after = 1.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.refused = 0
        # Only the counters, not every request, when the bench sends thousands.
        self.record_requests = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/_fake/stats", self._stats)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        # A deep backlog: a client opening hundreds of connections at once is not refused.
        await web.TCPSite(self._runner, "127.0.0.1", port, backlog=4096).start()
        self.port = self._runner.addresses[0][1]

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "refused": self.refused,
            "answered": len(self.answered_chats()) if self.record_requests else -1,
        }

    def reset_peak(self) -> None:
        self.peak_in_flight = self.in_flight

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def script_chat(self, *actions: Action) -> None:
        """The next chat calls take these actions, one each, in order; then normal answers."""
        self._chat_script.extend(actions)

    def script_embeddings(self, *actions: Action) -> None:
        self._embed_script.extend(actions)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def answered_chats(self) -> list[RecordedRequest]:
        return [r for r in self.chat_requests() if r.status == 200]

    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    # --- HTTP ---

    async def _read(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        return body if isinstance(body, dict) else {}

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    @staticmethod
    def _error(
        status: int, message: str, retry_after: float | None = None, code: str | None = None
    ) -> web.Response:
        kind, usual = _ERROR_TYPES.get(status, ("server_error", None))
        code = code or usual
        headers = {"x-request-id": "req_fake"}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        body = {
            "error": {
                "message": message or f"fake error {status}",
                "type": kind,
                "param": None,
                "code": code,
            }
        }
        return web.json_response(body, status=status, headers=headers)

    async def _take(
        self, request: web.Request, script: deque[Action], body: dict[str, Any]
    ) -> web.StreamResponse | Content | None:
        """Run the next scripted action; a response to send as is, a Content, or None."""
        if not self._authorised(request):
            self._record(request, body, 401)
            return self._error(401, "Incorrect API key provided: sk-***.")
        if not script:
            return None
        action = script.popleft()
        if isinstance(action, Fault):
            self._record(request, body, action.status)
            return self._error(action.status, action.message, action.retry_after, action.code)
        if isinstance(action, Disconnect):
            self._record(request, body, 0)
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(action, Delay):
            # Recorded on arrival: the client has usually given up before the answer.
            self._record(request, body, 0, delayed=action.seconds)
            try:
                await asyncio.wait_for(self._closing.wait(), action.seconds)
            except TimeoutError:
                pass
            return web.json_response({"error": {"message": "answered too late"}}, status=504)
        return action

    def _record(
        self,
        request: web.Request,
        body: dict[str, Any],
        status: int,
        usage: dict[str, int] | None = None,
        delayed: float = 0.0,
    ) -> None:
        if not self.record_requests:
            return
        recorded = RecordedRequest(
            request.method, request.path, dict(request.headers), body, status, usage or {}, delayed
        )
        self.requests.append(recorded)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("reset_peak"):
            self.reset_peak()
        return web.json_response(self.stats())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            self.refused += 1
            body = await self._read(request)
            self._record(request, body, 429)
            return self._error(429, "Rate limit reached for requests", self.retry_after)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return await self._answer_chat(request)
        finally:
            self.in_flight -= 1

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        taken = await self._take(request, self._chat_script, body)
        if isinstance(taken, web.StreamResponse):
            return taken
        if not body.get("model") or not isinstance(body.get("messages"), list):
            self._record(request, body, 400)
            return self._error(400, "'model' and 'messages' are required.")
        if isinstance(taken, Content):
            text, finish = taken.text, taken.finish_reason
        else:
            text, finish = self._default_answer(body), "stop"
        prompt = sum(count_words(_message_text(m)) + 3 for m in body["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": count_words(text),
            "total_tokens": prompt + count_words(text),
        }
        self._record(request, body, 200, usage)
        return web.json_response(
            {
                "id": f"chatcmpl-fake-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )

    def _default_answer(self, body: dict[str, Any]) -> str:
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema", {}).get("schema", {})
            return json.dumps(sample_for_schema(schema))
        if self.chat_responder is not None:
            return self.chat_responder(body)
        users = [m for m in body["messages"] if m.get("role") == "user"]
        last = _message_text(users[-1]) if users else ""
        return f"Fake model answer about: {' '.join(last.split()[:12])}"

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        taken = await self._take(request, self._embed_script, body)
        if isinstance(taken, web.StreamResponse):
            return taken
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        elif isinstance(raw, list) and raw:
            texts = [json.dumps(t) for t in raw]  # token arrays: hash their text form
        else:
            self._record(request, body, 400)
            return self._error(400, "'input' must be a string or a non-empty array.")
        dims = int(body.get("dimensions") or self.default_dimensions)
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, dims)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                if base64_format
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count_words(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._record(request, body, 200, usage)
        return web.json_response(
            {"object": "list", "data": data, "model": body.get("model", ""), "usage": usage}
        )


async def _serve(args: argparse.Namespace) -> None:
    server = FakeOpenAI(api_key=args.api_key)
    server.latency = args.latency
    server.max_in_flight = args.max_in_flight
    server.record_requests = False
    await server.start(args.port)
    print(f"fake OpenAI on {server.base_url}, {args.latency * 1000:.0f} ms a chat call", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="The fake OpenAI server, on its own (benches).")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per chat answer")
    parser.add_argument("--max-in-flight", type=int, default=None)
    parser.add_argument("--api-key", default="sk-bench")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args))
    except ImportError:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
