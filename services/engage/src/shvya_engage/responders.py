"""Who writes the text: an OpenAI-compatible chat model, or the offline responder.

Both take the same prompts and retrieved sources. The offline responder is deterministic: it
answers with the best knowledge-base passage, summarises extractively and bumps with
templates, and it says what it is (responder "offline", no model) in the message metadata, the
events, the summary and the logs, so it is never mistaken for a model.

OpenAI errors are mapped here, at the boundary:

    openai.OpenAIError
    ├── APITimeoutError, APIConnectionError            → RetryableError
    ├── APIStatusError 408, 409, 429, 5xx               → RetryableError
    ├── APIStatusError 400, 401, 403, 404, 422, ...     → PermanentError (with the API's reason)
    └── APIResponseValidationError, anything else       → RetryableError

A summary whose JSON does not validate is a RetryableError too: the next attempt may pass, and
after the retry schedule the job is dead-lettered with the validation error as its reason.

Every call goes through the model gate (`gate.py`). A 429 that is a rate limit (not an
exhausted quota) is not an error of the job: the gate closes for the provider's Retry-After,
and the call waits and goes again within the same attempt, for up to
`MODEL_RATE_LIMIT_WAIT_SECONDS`; only then does it become a RetryableError.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import openai
import structlog
from openai.types.chat import ChatCompletion
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shvya_common import tracing
from shvya_common.errors import PermanentError, RetryableError, ShvyaError
from shvya_common.metrics import LLM_SECONDS
from shvya_engage.followups import template_bumpup
from shvya_engage.gate import ModelGate
from shvya_engage.metrics import AI_CALLS, MODEL_RATE_LIMITED, record_tokens
from shvya_engage.prompts import Prompt
from shvya_engage.repository import BumpupState, Conversation, EngageContext
from shvya_engage.summaries import (
    SUMMARY_RESPONSE_FORMAT,
    ConversationSummary,
    best_passage,
    extractive_summary,
)

log = structlog.get_logger(__name__)

OFFLINE = "offline"
OFFLINE_NOTE = (
    "(Automatic answer from our knowledge base — a member of our team will follow up "
    "if you need more.)"
)


@dataclass(frozen=True)
class Generation:
    text: str
    responder: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class SummaryResult:
    summary: ConversationSummary
    responder: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Responder(Protocol):
    name: str

    async def reply(self, ctx: EngageContext, prompt: Prompt) -> Generation: ...

    async def summarize(self, conv: Conversation, prompt: Prompt) -> SummaryResult: ...

    async def bumpup(self, state: BumpupState, prompt: Prompt, number: int) -> Generation: ...


def _api_reason(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        nested = body.get("error")
        detail = nested.get("message") if isinstance(nested, dict) else body.get("message")
        if isinstance(detail, str) and detail:
            return detail[:300]
    return err.message[:300]


def map_api_error(err: Exception) -> ShvyaError:
    """The SHVYA error for a failed model call: retry it, or dead-letter it with the reason."""
    if isinstance(err, openai.APITimeoutError):
        return RetryableError("model API timed out")
    if isinstance(err, openai.APIConnectionError):
        return RetryableError(f"model API unreachable: {err}")
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        if status in (408, 409, 429) or status >= 500:
            return RetryableError(f"model API returned {status}: {_api_reason(err)}")
        return PermanentError(
            f"model API rejected the request ({status} {type(err).__name__}): {_api_reason(err)}"
        )
    return RetryableError(f"model API error {type(err).__name__}: {err}")


def retry_after_seconds(err: openai.APIStatusError) -> float | None:
    """The provider's Retry-After (OpenAI's `retry-after-ms`, or seconds, or an HTTP date)."""
    headers = err.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def is_rate_limit(err: openai.OpenAIError) -> bool:
    """A 429 that says "slow down", not "your quota is spent" (that one does not pass soon)."""
    return isinstance(err, openai.RateLimitError) and err.code != "insufficient_quota"


class OfflineResponder:
    """Deterministic text for when no model is configured; never mistaken for a model."""

    name = OFFLINE

    async def reply(self, ctx: EngageContext, prompt: Prompt) -> Generation:
        first = ctx.lead.first_name
        greeting = f"Hi {first}!" if first else "Hi!"
        if prompt.sources:
            best = prompt.sources[0]
            passage = best_passage(best.content, ctx.message_text)
            text = (
                f"{greeting} Thanks for your message. Here is what our “{best.title}” says:"
                f"\n\n{passage}\n\n{OFFLINE_NOTE}"
            )
        else:
            text = (
                f"{greeting} Thanks for your message. We have received it and a member of our "
                "team will get back to you shortly."
            )
        AI_CALLS.labels("ai.engage", OFFLINE, "ok").inc()
        return Generation(text=text, responder=OFFLINE, model=None)

    async def summarize(self, conv: Conversation, prompt: Prompt) -> SummaryResult:
        AI_CALLS.labels("ai.summary", OFFLINE, "ok").inc()
        summary = extractive_summary(conv.lead.contact_name, conv.turns)
        return SummaryResult(summary=summary, responder=OFFLINE, model=None)

    async def bumpup(self, state: BumpupState, prompt: Prompt, number: int) -> Generation:
        AI_CALLS.labels("followup.bumpup", OFFLINE, "ok").inc()
        text = template_bumpup(state.lead.lead_id, state.lead.first_name, number)
        return Generation(text=text, responder=OFFLINE, model=None)


class OpenAIResponder:
    """Chat completions through the official SDK; retries belong to the job schedule.

    The request goes through the client's `post` (the SDK's documented way to call an endpoint
    by its path), not `chat.completions.create`: `create` runs every request through a generic
    TypedDict transform that, for the plain JSON we send (model, messages of strings,
    temperature, max_tokens, a response_format), returns it unchanged, and it was a sixth of
    engage's CPU under load. Authentication, retries, timeouts and the error types are the
    client's, as with `create`; the answer is parsed into the same `ChatCompletion`.
    """

    name = "openai"

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        default_model: str,
        *,
        summary_max_tokens: int = 800,
        bumpup_max_tokens: int = 150,
        gate: ModelGate | None = None,
        rate_limit_wait: float = 300.0,
    ) -> None:
        self.client = client
        self.default_model = default_model
        self.summary_max_tokens = summary_max_tokens
        self.bumpup_max_tokens = bumpup_max_tokens
        self.gate = gate or ModelGate(512)
        self.rate_limit_wait = rate_limit_wait

    async def _complete(
        self, task: str, company_id: uuid.UUID, **request: Any
    ) -> tuple[ChatCompletion, str, int, int]:
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": request["model"],
            "shvya.task": task,
        }
        with tracing.span(
            f"chat {request['model']}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            give_up_waiting = time.monotonic() + self.rate_limit_wait
            while True:
                started = time.perf_counter()
                try:
                    async with self.gate.slot(company_id):
                        started = time.perf_counter()
                        completion = await self.client.post(
                            "/chat/completions", body=request, cast_to=ChatCompletion
                        )
                except openai.OpenAIError as err:
                    if is_rate_limit(err) and time.monotonic() < give_up_waiting:
                        assert isinstance(err, openai.RateLimitError)
                        MODEL_RATE_LIMITED.inc()
                        LLM_SECONDS.labels(task, "rate_limited").observe(
                            time.perf_counter() - started
                        )
                        self.gate.rate_limited(retry_after_seconds(err))
                        continue  # waits at the gate until the provider's Retry-After passed
                    if isinstance(err, openai.APITimeoutError):
                        self.gate.slowed()
                    mapped = map_api_error(err)
                    outcome = "permanent" if isinstance(mapped, PermanentError) else "retryable"
                    AI_CALLS.labels(task, self.name, outcome).inc()
                    LLM_SECONDS.labels(task, outcome).observe(time.perf_counter() - started)
                    log.warning("model_call_failed", task=task, error=str(mapped))
                    raise mapped from err
                break
            self.gate.succeeded()
            LLM_SECONDS.labels(task, "ok").observe(time.perf_counter() - started)
            model = completion.model or request["model"]
            usage = completion.usage
            prompt_tokens = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else 0
            if span is not None:
                span.set_attribute("gen_ai.response.model", model)
                span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        record_tokens(company_id, task, self.name, model, prompt_tokens, completion_tokens)
        return completion, model, prompt_tokens, completion_tokens

    @staticmethod
    def _text(completion: ChatCompletion) -> str:
        if not completion.choices:
            return ""
        return (completion.choices[0].message.content or "").strip()

    async def reply(self, ctx: EngageContext, prompt: Prompt) -> Generation:
        completion, model, p, c = await self._complete(
            "ai.engage",
            ctx.company_id,
            model=ctx.config.model or self.default_model,
            messages=prompt.messages,
            temperature=ctx.config.temperature,
            max_tokens=ctx.config.max_tokens,
        )
        AI_CALLS.labels("ai.engage", self.name, "ok").inc()
        return Generation(self._text(completion), self.name, model, p, c)

    async def summarize(self, conv: Conversation, prompt: Prompt) -> SummaryResult:
        completion, model, p, c = await self._complete(
            "ai.summary",
            conv.lead.company_id,
            model=conv.config.model or self.default_model,
            messages=prompt.messages,
            temperature=0.2,
            max_tokens=self.summary_max_tokens,
            response_format=SUMMARY_RESPONSE_FORMAT,
        )
        message = completion.choices[0].message if completion.choices else None
        if message is not None and message.refusal:
            AI_CALLS.labels("ai.summary", self.name, "invalid_output").inc()
            raise RetryableError(f"model refused to summarise: {message.refusal[:200]}")
        try:
            summary = ConversationSummary.model_validate_json(self._text(completion))
        except ValidationError as err:
            AI_CALLS.labels("ai.summary", self.name, "invalid_output").inc()
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}"
                for e in err.errors()[:5]
            )
            raise RetryableError(f"summary output did not validate: {problems}") from err
        AI_CALLS.labels("ai.summary", self.name, "ok").inc()
        return SummaryResult(summary, self.name, model, p, c)

    async def bumpup(self, state: BumpupState, prompt: Prompt, number: int) -> Generation:
        completion, model, p, c = await self._complete(
            "followup.bumpup",
            state.lead.company_id,
            model=state.config.model or self.default_model,
            messages=prompt.messages,
            temperature=state.config.temperature,
            max_tokens=self.bumpup_max_tokens,
        )
        AI_CALLS.labels("followup.bumpup", self.name, "ok").inc()
        return Generation(self._text(completion), self.name, model, p, c)
