"""The Grafana dashboard and the Prometheus alert rules query only metrics that exist.

Every PromQL expression in deploy/grafana/dashboards/*.json and deploy/prometheus/rules/*.yml is
parsed (promql-parser); each series it selects must be one the services expose, as rendered by
prometheus_client from their metric modules (declared families appear with # HELP / # TYPE even
before any sample), or one Prometheus or prometheus-nats-exporter produces; each label matcher
must name a label that series has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase

import shvya_common.metrics
import shvya_engage.metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
METRIC_MODULES = (shvya_common.metrics, shvya_engage.metrics)

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus writes itself.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": set()}
# prometheus-nats-exporter with -jsz=all (its scrape output): stream and consumer gauges.
_JSZ_STREAM = {"account", "account_id", "account_name", "cluster", "domain", "is_meta_leader"}
_JSZ_STREAM |= {"is_stream_leader", "meta_leader", "server_id", "server_name", "stream_leader"}
_JSZ_STREAM |= {"stream_name", "stream_raft_group"}
_JSZ_CONSUMER = _JSZ_STREAM | {"consumer_desc", "consumer_leader", "consumer_name"}
_JSZ_CONSUMER |= {"is_consumer_leader"}
EXPORTER_SERIES: dict[str, set[str]] = {
    "jetstream_stream_total_messages": _JSZ_STREAM,
    "jetstream_stream_total_bytes": _JSZ_STREAM,
    "jetstream_consumer_num_pending": _JSZ_CONSUMER,
    "jetstream_consumer_num_ack_pending": _JSZ_CONSUMER,
    "jetstream_consumer_num_redelivered": _JSZ_CONSUMER,
}
# Grafana's built-in variables, replaced by a duration so the expression parses as PromQL.
GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)\b")


def exposed_series() -> dict[str, set[str]]:
    """Series name -> label names, for every family the services' metric modules declare."""
    exposition = generate_latest(REGISTRY).decode()
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE))
    series: dict[str, set[str]] = {}
    for module in METRIC_MODULES:
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            family = metric.describe()[0]
            # prometheus_client keeps label names only privately; they are what .labels() takes.
            labels = set(metric._labelnames)
            kind = declared.get(family.name) or declared[f"{family.name}_total"]
            if kind == "counter":
                series[f"{family.name}_total"] = labels
            elif kind == "histogram":
                series[f"{family.name}_bucket"] = labels | {"le"}
                series[f"{family.name}_sum"] = labels
                series[f"{family.name}_count"] = labels
            else:
                series[family.name] = labels
    return series


def known_series() -> dict[str, set[str]]:
    return exposed_series() | PROMETHEUS_SERIES | EXPORTER_SERIES


def _walk_json(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _walk_json(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_json(item)


def dashboard_exprs() -> list[str]:
    return [e for path in DASHBOARDS for e in _walk_json(json.loads(path.read_text()))]


def rule_exprs() -> list[str]:
    return [
        str(rule["expr"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names matched) for each vector selector in a PromQL expression."""
    parsed = promql_parser.parse(GRAFANA_VARIABLES.sub("5m", expr))
    found: list[tuple[str, set[str]]] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matched = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name or "", matched))
        return True

    promql_parser.walk(parsed, visit)
    return found


def problems(exprs: list[str], known: dict[str, set[str]]) -> list[str]:
    """What each expression selects that no service (or Prometheus, or the exporter) exposes."""
    out = []
    for expr in exprs:
        for name, labels in selectors(expr):
            if name not in known:
                out.append(f"{name}: no such series (in {expr!r})")
            elif unknown := labels - known[name] - TARGET_LABELS:
                out.append(f"{name}: no label {sorted(unknown)} (in {expr!r})")
    return out


def test_the_files_under_test_exist_and_hold_queries():
    """The dashboard and the rules are found, so the checks below are not vacuous."""
    assert DASHBOARDS and RULE_FILES
    assert len(dashboard_exprs()) >= 20 and len(rule_exprs()) >= 6


def test_every_declared_family_is_rendered_in_the_exposition():
    """prometheus_client renders each declared family (# TYPE) even before its first sample."""
    exposition = generate_latest(REGISTRY).decode()
    for name in exposed_series():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert re.search(rf"^# TYPE {re.escape(base)} ", exposition, re.MULTILINE), name


def test_dashboard_queries_only_exposed_metrics_and_labels():
    """Each series and label the Grafana dashboard selects is exposed by a service."""
    assert problems(dashboard_exprs(), known_series()) == []


def test_alert_rules_query_only_exposed_metrics_and_labels():
    """Each series and label the alert rules select is exposed by a service."""
    assert problems(rule_exprs(), known_series()) == []


def test_a_misspelt_metric_or_label_is_reported():
    """The check catches a wrong metric name, a wrong label, and a histogram without a suffix."""
    known = known_series()
    assert problems(["rate(shvya_jobz_total[5m])"], known) == [
        "shvya_jobz_total: no such series (in 'rate(shvya_jobz_total[5m])')"
    ]
    assert problems(['shvya_dlq_depth{queue="x"}'], known)
    assert problems(["rate(shvya_http_request_seconds[5m])"], known)
    grafana = "rate(shvya_http_request_seconds_bucket{le='1'}[$__rate_interval])"
    assert problems([grafana], known) == []


@pytest.mark.parametrize(
    "series",
    [
        "shvya_http_request_seconds_bucket",
        "shvya_consumer_pending",
        "shvya_consumer_ack_pending",
        "shvya_jobs_total",
        "shvya_dlq_depth",
        "shvya_sends_total",
        "shvya_llm_request_seconds_bucket",
        "shvya_ai_tokens_total",
        "shvya_policy_deferrals_total",
        "shvya_outbox_published_total",
        "shvya_outbox_unpublished",
        "shvya_reconciler_republished_total",
        "shvya_channel_paused",
        "shvya_build_info",
    ],
)
def test_the_dashboard_shows_each_operator_metric(series: str):
    """Every metric operators need has a panel on the dashboard."""
    assert any(name == series for e in dashboard_exprs() for name, _ in selectors(e))


def test_the_alerts_operators_need_are_defined():
    """DLQ growth, consumer lag, ingest 5xx, a worker down, LLM errors and a paused WhatsApp."""
    names = {
        rule["alert"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "ShvyaDeadLettersGrowing",
        "ShvyaConsumerLag",
        "ShvyaIngest5xxRate",
        "ShvyaTargetDown",
        "ShvyaLLMErrorRate",
        "ShvyaWhatsAppChannelPaused",
    } <= names
