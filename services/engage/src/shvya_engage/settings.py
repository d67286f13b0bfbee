"""Engage settings: the chat model endpoint, prompt budgets, per-channel length limits,
knowledge-base retrieval, summaries and bump-ups."""

from __future__ import annotations

from pydantic import Field

from shvya_common.knowledge.settings import KnowledgeSettings


class EngageSettings(KnowledgeSettings):
    """OPENAI_API_KEY and OPENAI_BASE_URL come from KnowledgeSettings: unset key = offline."""

    # A model call is waiting, not work: engage holds hundreds of jobs at once (the other
    # services keep small pools). The model gate, not this, bounds the calls in flight.
    worker_concurrency: int = Field(
        512, ge=1, le=4096, description="Jobs engage runs at once (most wait on the model)."
    )
    # Summaries (priority 90, below the conversational 95) are background work: 32 at once keep
    # engage's event loop free enough that a lead's reply starts within milliseconds behind a
    # backlog of thousands (bench: p99 57 ms with 32, 821 ms with 384; docs/performance.md).
    worker_low_priority_slots: int | None = Field(
        32,
        ge=1,
        description="Most summaries and other jobs below priority 95 engage runs at once.",
    )
    model_concurrency: int = Field(
        384,
        ge=1,
        le=4096,
        description="Most model calls in flight to the provider (never more than "
        "WORKER_CONCURRENCY); halved by each burst of 429s, then raised by one per answer.",
    )
    model_concurrency_per_company: int = Field(
        0, ge=0, description="Most model calls in flight for one company (0 = no share of its own)."
    )
    model_rate_limit_wait_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a call waits out the provider's 429s (Retry-After) within one "
        "attempt before the job is retried on its schedule.",
    )
    openai_timeout_seconds: float = Field(30.0, gt=0)
    default_model: str = Field("gpt-4o-mini", description="Model when a company sets none.")
    history_messages: int = Field(
        20, ge=0, le=200, description="Most recent messages considered for a prompt."
    )
    history_token_budget: int = Field(
        1500, ge=0, description="Tokens of conversation history a reply prompt may carry."
    )
    kb_top_k: int = Field(4, ge=0, le=20, description="Knowledge-base chunks retrieved per reply.")
    kb_token_budget: int = Field(
        1500, ge=0, description="Tokens of knowledge-base sources a reply prompt may carry."
    )
    message_token_limit: int = Field(
        1000, ge=16, description="Tokens of the inbound message kept in the prompt."
    )
    whatsapp_max_chars: int = Field(
        4096, ge=64, le=4096, description="Longest reply on WhatsApp (its limit is 4096)."
    )
    email_max_chars: int = Field(20_000, ge=64, description="Longest reply by email.")
    other_max_chars: int = Field(4096, ge=64, description="Longest reply on other channels.")
    reply_fallback: str = Field(
        "Thanks for your message! A member of our team will get back to you shortly.",
        min_length=1,
        description="Sent when a generated reply is empty after the guards.",
    )
    summary_history_messages: int = Field(
        60, ge=1, le=500, description="Most recent messages a summary reads."
    )
    summary_token_budget: int = Field(
        3000, ge=100, description="Tokens of conversation a summary prompt may carry."
    )
    summary_max_tokens: int = Field(800, ge=100, description="Completion tokens for a summary.")
    bumpup_silent_days: float = Field(
        3.0, ge=0, description="A bump-up goes out only after this many days of silence."
    )
    bumpup_max: int = Field(
        3, ge=0, description="Bump-ups sent in a row without a reply, then no more."
    )
    bumpup_ai: bool = Field(
        True, description="Let the model write bump-ups when one is configured (else templates)."
    )
    reply_breaker_max: int = Field(
        10,
        ge=0,
        description="Most automated replies to one lead within the window; the next inbound "
        "message is filed but not answered, and a lead.reply_breaker_open event is raised "
        "(0 = no limit).",
    )
    reply_breaker_window_seconds: float = Field(
        3600.0, gt=0, description="Window the reply breaker counts automated replies in."
    )
