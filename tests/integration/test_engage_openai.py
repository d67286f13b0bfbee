"""Engage's OpenAI responder with the real `openai` SDK (aiohttp transport) against a local
server speaking the OpenAI wire format: requests, usage, error mapping, structured summaries."""

from __future__ import annotations

import asyncio
import json
import uuid

import openai
import pytest
from prometheus_client import REGISTRY

from shvya_common.errors import PermanentError, RetryableError
from shvya_common.knowledge import OpenAIEmbedder
from shvya_engage.gate import ModelGate
from shvya_engage.prompts import build_reply_prompt, build_summary_prompt
from shvya_engage.repository import AiConfig, Conversation, EngageContext, LeadFacts, Turn
from shvya_engage.responders import OpenAIResponder
from tests.fakes.openai_server import Content, Delay, Disconnect, FakeOpenAI, Fault

KEY = "sk-test-engage"


@pytest.fixture
async def server():
    async with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def responder(server):
    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=server.base_url,
        timeout=0.5,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    # No waiting out 429s here: these tests pin how each failure maps when it is not waited out.
    yield OpenAIResponder(client, "gpt-default", summary_max_tokens=700, rate_limit_wait=0)
    await client.close()


def make_ctx(model: str | None = "gpt-company") -> EngageContext:
    lead = LeadFacts(uuid.uuid4(), uuid.uuid4(), "Meera", "+15550002", None, "New", {})
    config = AiConfig(model, 0.25, 321, "You are Sol, Acme Solar's assistant.")
    return EngageContext(
        lead,
        uuid.uuid4(),
        "Do you sell batteries?",
        "whatsapp_cloud",
        config,
        [Turn("inbound", "Hi"), Turn("outbound", "Hello! How can I help?")],
    )


def prompt_for(ctx: EngageContext):
    return build_reply_prompt(ctx, [], history_budget=500, source_budget=500, message_budget=100)


def tokens(company_id, task: str, kind: str, model: str) -> float:
    value = REGISTRY.get_sample_value(
        "shvya_ai_tokens_total",
        {
            "company_id": str(company_id),
            "task": task,
            "kind": kind,
            "responder": "openai",
            "model": model,
        },
    )
    return value or 0.0


async def test_reply_sends_company_settings_and_reports_usage(server, responder):
    """The company's model, temperature and max_tokens are sent; usage becomes token metrics."""
    ctx = make_ctx()
    prompt = prompt_for(ctx)
    generation = await responder.reply(ctx, prompt)
    [request] = server.chat_requests()
    assert request.body["model"] == "gpt-company"
    assert request.body["temperature"] == 0.25 and request.body["max_tokens"] == 321
    assert request.body["messages"] == prompt.messages
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert generation.model == "gpt-company" and generation.responder == "openai"
    assert generation.text.startswith("Fake model answer about:")
    assert generation.prompt_tokens == request.usage["prompt_tokens"] > 0
    assert generation.completion_tokens == request.usage["completion_tokens"] > 0
    assert tokens(ctx.company_id, "ai.engage", "prompt", "gpt-company") == generation.prompt_tokens
    assert tokens(ctx.company_id, "ai.engage", "completion", "gpt-company") == (
        generation.completion_tokens
    )


async def test_company_without_a_model_uses_the_default(server, responder):
    """A company whose ai_models row names no model gets DEFAULT_MODEL."""
    ctx = make_ctx(model=None)
    await responder.reply(ctx, prompt_for(ctx))
    assert server.chat_requests()[0].body["model"] == "gpt-default"


@pytest.mark.parametrize(
    ("action", "fragment"),
    [
        (Fault(429, "Rate limit reached for gpt-company"), "429: Rate limit reached"),
        (
            Fault(429, "You exceeded your current quota", code="insufficient_quota"),
            "429: You exceeded your current quota",
        ),
        (Fault(500, "The server had an error"), "500: The server had an error"),
        (Fault(503, "Overloaded"), "503"),
        (Delay(3.0), "timed out"),
        # The aiohttp transport reports a dropped connection as a connect timeout.
        (Disconnect(), "timed out|unreachable"),
    ],
)
async def test_transient_failures_are_retryable(server, responder, action, fragment):
    """Rate limits, 5xx, timeouts and dropped connections map to RetryableError."""
    server.script_chat(action)
    ctx = make_ctx()
    with pytest.raises(RetryableError, match=fragment):
        await responder.reply(ctx, prompt_for(ctx))
    # The next call goes through: nothing sticky was left behind in the client.
    assert (await responder.reply(ctx, prompt_for(ctx))).text


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "Invalid value for 'temperature'", "BadRequestError"),
        (401, "Incorrect API key provided", "AuthenticationError"),
        (403, "Project does not have access to model", "PermissionDeniedError"),
    ],
)
async def test_rejections_are_permanent_with_the_reason(server, responder, status, message, kind):
    """400, 401 and 403 map to PermanentError carrying the status and the API's reason."""
    server.script_chat(Fault(status, message))
    ctx = make_ctx()
    with pytest.raises(PermanentError) as raised:
        await responder.reply(ctx, prompt_for(ctx))
    assert f"({status} {kind}): {message}" in str(raised.value)


async def test_wrong_key_is_permanent(server):
    """A key the server does not accept is a permanent failure, not something to retry."""
    client = openai.AsyncOpenAI(api_key="sk-wrong", base_url=server.base_url, max_retries=0)
    ctx = make_ctx()
    try:
        with pytest.raises(PermanentError, match="401 AuthenticationError"):
            await OpenAIResponder(client, "m").reply(ctx, prompt_for(ctx))
    finally:
        await client.close()


def conversation() -> Conversation:
    ctx = make_ctx()
    turns = [Turn("inbound", "Is the battery worth it?"), Turn("outbound", "It saves 30%.")]
    return Conversation(ctx.lead, ctx.config, turns, uuid.uuid4(), None)


async def test_summary_request_uses_strict_json_schema(server, responder):
    """ai.summary asks for response_format json_schema (strict) and parses the JSON reply."""
    conv = conversation()
    result = await responder.summarize(
        conv, build_summary_prompt(conv.lead, conv.turns, budget=500)
    )
    [request] = server.chat_requests()
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    spec = response_format["json_schema"]
    assert spec["name"] == "conversation_summary" and spec["strict"] is True
    assert spec["schema"]["required"] == ["summary", "key_points", "sentiment", "next_action"]
    assert request.body["max_tokens"] == 700
    assert result.summary.sentiment == "positive"  # the first enum value the fake picks
    assert result.summary.key_points == ["sample text"]
    assert result.prompt_tokens == request.usage["prompt_tokens"]


async def test_requests_are_what_the_sdks_create_sends(server, responder):
    """The responder posts to /chat/completions itself (skipping `create`'s transform); the
    body and the headers that matter equal what `chat.completions.create` sends for it."""
    ctx = make_ctx()
    await responder.reply(ctx, prompt_for(ctx))
    conv = conversation()
    await responder.summarize(conv, build_summary_prompt(conv.lead, conv.turns, budget=500))
    ours = server.chat_requests()
    assert [r.body.get("response_format", {}).get("type") for r in ours] == [None, "json_schema"]
    for request in ours:
        await responder.client.chat.completions.create(**request.body)
    theirs = server.chat_requests()[len(ours) :]
    assert [r.body for r in ours] == [r.body for r in theirs]
    for mine, sdk in zip(ours, theirs, strict=True):
        for header in ("Authorization", "Content-Type", "User-Agent"):
            assert mine.headers[header] == sdk.headers[header]


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"summary": "x", "key_points": [], "sentiment": "furious", "next_action": "x"}),
        '{"summary": "truncated because max_tok',
        "Here is your summary: the lead is happy.",
    ],
)
async def test_summary_that_does_not_validate_is_retryable(server, responder, content):
    """Structured output that breaks the schema raises RetryableError naming the problem."""
    server.script_chat(Content(content))
    conv = conversation()
    with pytest.raises(RetryableError, match="summary output did not validate"):
        await responder.summarize(conv, build_summary_prompt(conv.lead, conv.turns, budget=500))


async def test_fake_server_embeddings_work_with_the_real_sdk(server):
    """The fake's embeddings endpoint answers the SDK's base64 requests with unit vectors of the
    asked size, deterministic and closer for texts that share words."""
    client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    try:
        embedder = OpenAIEmbedder(client, dimensions=384)
        panels, panels_again, other = await embedder.embed(
            ["solar panel warranty", "warranty for solar panels", "office opening hours"]
        )
        [repeat] = await embedder.embed(["solar panel warranty"])
    finally:
        await client.close()
    [first, _] = server.embedding_requests()
    assert first.body["dimensions"] == 384 and first.body["encoding_format"] == "base64"
    assert len(panels) == 384 and abs(sum(v * v for v in panels) - 1.0) < 1e-5
    assert repeat == panels

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(panels, panels_again) > cosine(panels, other)


@pytest.fixture
async def gated(server):
    """A client and a responder that waits out 429s, behind a gate of at most 4 calls."""
    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=server.base_url,
        timeout=5,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    gate = ModelGate(4)
    yield OpenAIResponder(client, "gpt-default", gate=gate, rate_limit_wait=60), gate
    await client.close()


async def test_a_rate_limit_is_waited_out_within_the_attempt(server, gated):
    """A 429 with Retry-After closes the gate for that long and the call goes again: no error."""
    responder, gate = gated
    server.script_chat(Fault(429, "Rate limit reached", retry_after=0.2))
    ctx = make_ctx()
    generation = await responder.reply(ctx, prompt_for(ctx))
    assert generation.text
    assert [r.status for r in server.chat_requests()] == [429, 200]
    assert gate.limit < 4  # halved by the 429, then raised by one answer


async def test_an_exhausted_quota_is_not_waited_out(server, gated):
    """A 429 that says the quota is spent fails the attempt (it will not pass in seconds)."""
    responder, _ = gated
    server.script_chat(Fault(429, "You exceeded your current quota", 0.1, "insufficient_quota"))
    ctx = make_ctx()
    with pytest.raises(RetryableError, match="quota"):
        await responder.reply(ctx, prompt_for(ctx))
    assert len(server.chat_requests()) == 1


async def test_the_gate_bounds_calls_in_flight(server, gated):
    """Twenty replies at once never have more than the gate's four calls at the provider."""
    responder, gate = gated
    server.latency = 0.05
    ctx = make_ctx()
    results = await asyncio.gather(*(responder.reply(ctx, prompt_for(ctx)) for _ in range(20)))
    assert all(r.text for r in results)
    assert server.peak_in_flight <= 4
    assert gate.peak_in_flight <= 4 and gate.in_flight == 0


async def test_a_provider_at_its_limit_pushes_back_without_failures(server, gated):
    """A provider that takes two calls at once and answers the rest 429 + Retry-After: every
    reply still succeeds, in one attempt each, and the gate comes down to what it takes."""
    responder, _ = gated
    server.latency = 0.05
    server.max_in_flight = 2
    server.retry_after = 0.05
    ctx = make_ctx()
    results = await asyncio.gather(*(responder.reply(ctx, prompt_for(ctx)) for _ in range(16)))
    assert len(results) == 16 and all(r.text for r in results)
    assert server.refused > 0
    assert server.peak_in_flight <= 2
    assert len(server.answered_chats()) == 16
