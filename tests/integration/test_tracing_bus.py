"""Trace context on the job bus: stored with the row when enqueued, carried as a `traceparent`
header on every publish, continued by the reconciler's republish; spans go to the SDK's
in-memory exporter in this process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shvya_common import tracing
from shvya_common.bus.relay import Relay, RelayConfig
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)


async def test_a_republished_row_continues_the_trace_it_was_enqueued_in(plat, spans):
    """A job enqueued inside a span stores its traceparent; when its message is lost, the
    reconciler's republish (with no live parent span) carries the same trace id."""
    with tracing.span("request") as root:
        assert root is not None
        trace_id = root.get_span_context().trace_id
        job = await plat.bus.enqueue_job("test.work", {})
    row = await eventually(
        lambda: plat.pool.fetchrow(
            "SELECT traceparent, published_at FROM jobs WHERE id = $1", job.id
        ),
        lambda r: r["published_at"] is not None,
    )
    assert row["traceparent"].split("-")[1] == f"{trace_id:032x}"
    subject = plat.topology.job_subject("test.work", 50, job.id)
    first = await plat.js.get_last_msg(plat.topology.jobs_stream, subject)
    assert first.headers["traceparent"].split("-")[1] == f"{trace_id:032x}"

    await plat.js.purge_stream(plat.topology.jobs_stream, subject=subject)
    await plat.pool.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes'")
    assert await Relay(plat.bus, RelayConfig(horizon=60.0)).reconcile_once() == 1

    again = await plat.js.get_last_msg(plat.topology.jobs_stream, subject)
    assert again.headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert again.headers["traceparent"] != first.headers["traceparent"]
    sends = [s for s in spans.get_finished_spans() if s.name == "send test.work"]
    assert len(sends) == 2
    assert {s.context.trace_id for s in sends} == {trace_id}
    assert {s.parent.span_id for s in sends if s.parent} == {root.get_span_context().span_id}


async def test_tracing_off_stores_no_context_and_adds_no_header(plat):
    """Without a configured exporter, rows get no traceparent and messages no header."""
    job = await plat.bus.enqueue_job("test.work", {})
    subject = plat.topology.job_subject("test.work", 50, job.id)
    msg = await eventually(lambda: plat.js.get_last_msg(plat.topology.jobs_stream, subject))
    assert "traceparent" not in (msg.headers or {})
    assert await plat.pool.fetchval("SELECT traceparent FROM jobs WHERE id = $1", job.id) is None
