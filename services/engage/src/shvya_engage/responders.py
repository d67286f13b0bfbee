"""Who writes a reply: an OpenAI-compatible chat model, or the offline responder.

The offline responder is deterministic and says what it is, in the text's metadata, the events
and the logs, so the embedded default answers without pretending to be a model.

OpenAI errors are mapped here, at the boundary: rate limits, timeouts, connection errors and
5xx are retryable; 400/401/403/404/422 are permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import openai

from shvya_common.errors import PermanentError, RetryableError
from shvya_engage.repository import EngageContext


@dataclass(frozen=True)
class Reply:
    text: str
    responder: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Responder(Protocol):
    name: str

    async def reply(self, ctx: EngageContext) -> Reply: ...


def build_messages(ctx: EngageContext) -> list[dict[str, str]]:
    """System prompt, lead context, recent history, then the message being answered."""
    lead_facts = [f"name: {ctx.contact_name or 'unknown'}", f"stage: {ctx.stage or 'New'}"]
    messages = [
        {"role": "system", "content": ctx.config.system_prompt},
        {"role": "system", "content": "Lead context. " + "; ".join(lead_facts)},
    ]
    for turn in ctx.history:
        role = "user" if turn.direction == "inbound" else "assistant"
        messages.append({"role": role, "content": turn.body})
    messages.append({"role": "user", "content": ctx.message_text})
    return messages


class OfflineResponder:
    """A deterministic reply for when no model is configured; never mistaken for a model."""

    name = "offline"

    async def reply(self, ctx: EngageContext) -> Reply:
        first = (ctx.contact_name or "").split(" ")[0]
        greeting = f"Hi {first}!" if first else "Hi!"
        text = (
            f"{greeting} Thanks for your message. We have received it and a member of our "
            "team will get back to you shortly."
        )
        return Reply(text=text, responder=self.name, model=None)


class OpenAIResponder:
    """Chat completions through the official SDK (aiohttp transport)."""

    name = "openai"

    def __init__(self, client: openai.AsyncOpenAI, default_model: str) -> None:
        self.client = client
        self.default_model = default_model

    async def reply(self, ctx: EngageContext) -> Reply:
        model = ctx.config.model or self.default_model
        try:
            completion = await self.client.chat.completions.create(
                model=model,
                messages=build_messages(ctx),  # type: ignore[arg-type]
                temperature=ctx.config.temperature,
                max_tokens=ctx.config.max_tokens,
            )
        except (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                openai.InternalServerError) as err:  # fmt: skip
            raise RetryableError(f"model API unavailable: {type(err).__name__}") from err
        except openai.APIStatusError as err:
            if err.status_code >= 500 or err.status_code in (408, 409, 429):
                raise RetryableError(f"model API returned {err.status_code}") from err
            raise PermanentError(f"model API rejected the request ({err.status_code})") from err
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        if not text:
            raise RetryableError("model returned an empty reply")
        usage = completion.usage
        return Reply(
            text=text, responder=self.name, model=completion.model or model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )  # fmt: skip
