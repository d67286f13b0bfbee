"""Engage's token counter keeps its company label bounded: a platform with thousands of
tenants does not grow a Prometheus series per company."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from shvya_engage import metrics


def tokens(company: str) -> float:
    value = REGISTRY.get_sample_value(
        "shvya_ai_tokens_total",
        {
            "company_id": company,
            "task": "t-bound",
            "kind": "prompt",
            "responder": "r",
            "model": "m",
        },
    )
    return value or 0.0


def test_companies_past_the_label_limit_are_counted_as_other(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_labelled", set())
    monkeypatch.setattr(metrics, "COMPANY_LABELS", 3)
    first = [uuid.uuid4() for _ in range(3)]
    later = [uuid.uuid4() for _ in range(5)]
    other_before = tokens("other")
    for company in first + later + first:
        metrics.record_tokens(company, "t-bound", "r", "m", 10, 1)
    assert [tokens(str(c)) for c in first] == [20.0, 20.0, 20.0]
    assert all(tokens(str(c)) == 0.0 for c in later)
    assert tokens("other") - other_before == 50.0
