"""Engage's Prometheus metrics: model tokens spent per company, and model calls by outcome.

Tokens are counted when the model answers, whether or not the job then commits, because that
is when they are billed. The offline responder spends none and is counted under its own label.
"""

from __future__ import annotations

from prometheus_client import Counter

AI_TOKENS = Counter(
    "shvya_ai_tokens_total",
    "Model tokens used, by company, task, kind (prompt or completion), responder and model.",
    ["company_id", "task", "kind", "responder", "model"],
)
AI_CALLS = Counter(
    "shvya_ai_calls_total",
    "Generations by task, responder and outcome (ok, retryable, permanent, invalid_output).",
    ["task", "responder", "outcome"],
)


def record_tokens(
    company_id: object, task: str, responder: str, model: str | None, prompt: int, completion: int
) -> None:
    labels = (str(company_id), task)
    AI_TOKENS.labels(*labels, "prompt", responder, model or "").inc(prompt)
    AI_TOKENS.labels(*labels, "completion", responder, model or "").inc(completion)
