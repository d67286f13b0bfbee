"""Engage's Prometheus metrics: model tokens spent per company, model calls by outcome, and the
model gate (calls in flight, calls waiting, the provider's current limit).

Tokens are counted when the model answers, whether or not the job then commits, because that
is when they are billed. The offline responder spends none and is counted under its own label.
The company label is bounded: the first `COMPANY_LABELS` companies a process sees get their own,
the rest are counted as `other` (a platform with thousands of tenants would otherwise grow a
series per company in Prometheus); every company's totals are in `ai_sessions`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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

MODEL_IN_FLIGHT = Gauge("shvya_model_calls_in_flight", "Model calls in flight now.")
MODEL_WAITING = Gauge("shvya_model_calls_waiting", "Model calls waiting at the gate for room.")
MODEL_GATE_LIMIT = Gauge(
    "shvya_model_gate_limit", "Model calls the gate admits at once now (halved by 429s)."
)
MODEL_RATE_LIMITED = Counter(
    "shvya_model_rate_limited_total", "429 answers from the model provider, waited out."
)


COMPANY_LABELS = 100
_labelled: set[str] = set()


def company_label(company_id: object) -> str:
    """The company's own label while fewer than COMPANY_LABELS have one, else 'other'."""
    key = str(company_id)
    if key in _labelled:
        return key
    if len(_labelled) < COMPANY_LABELS:
        _labelled.add(key)
        return key
    return "other"


def record_tokens(
    company_id: object, task: str, responder: str, model: str | None, prompt: int, completion: int
) -> None:
    labels = (company_label(company_id), task)
    AI_TOKENS.labels(*labels, "prompt", responder, model or "").inc(prompt)
    AI_TOKENS.labels(*labels, "completion", responder, model or "").inc(completion)
