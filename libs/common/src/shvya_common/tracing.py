"""OpenTelemetry tracing across the whole path: HTTP request, each NATS hop, model and provider.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set: then each process installs an SDK tracer
provider that batches spans to `<endpoint>/v1/traces` over OTLP/HTTP (protobuf), and every
helper here is live. Otherwise the API's no-op provider stays in place and the helpers return at
once, so a platform without a collector pays one boolean test per hop.

The trace crosses NATS as a W3C `traceparent` message header (`producer_span` on the way out,
`consumer_span` on the way in). A row republished later by the relay, the reconciler or a timer
has no live parent span, so the context is also stored with the row when it is enqueued
(`jobs.traceparent`, `messages.traceparent`, migration 0014) and every publish of the row
continues that trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_provider: Any = None
TRACER_NAME = "shvya"


def enabled() -> bool:
    """True once `configure` installed an exporting provider in this process."""
    return _provider is not None


def configure(service: str, endpoint: str | None) -> None:
    """Export this process's spans to the OTLP/HTTP `endpoint`; with None, leave tracing off."""
    global _provider
    if not endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"shvya-{service}"}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider


def install(provider: Any) -> None:
    """Make this module's spans go to `provider` (a test's, with an in-memory exporter), or turn
    them off again with None; the process-wide OpenTelemetry provider is left as it is."""
    global _provider
    _provider = provider


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    if _provider is not None:
        with contextlib.suppress(Exception):
            _provider.shutdown()


def tracer() -> trace.Tracer:
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    tracer: trace.Tracer = provider.get_tracer(TRACER_NAME)
    return tracer


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to store with a row; None when tracing is off."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def _parent(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Iterator[Span | None]:
    """A span around a block, child of `parent` when given (else of the active span), marked
    failed by an exception, or None when tracing is off."""
    if _provider is None:
        yield None
        return
    with tracer().start_as_current_span(
        name,
        context=_parent(parent),
        kind=kind,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    ) as current:
        yield current


def producer_span(
    task: str, subject: str, traceparent: str | None, headers: dict[str, str]
) -> contextlib.AbstractContextManager[Span | None]:
    """The producer span of one publish of a row, continuing the row's stored trace; its context
    goes into the message `headers`."""
    if _provider is None or not traceparent:
        return contextlib.nullcontext()
    return _producer(task, subject, traceparent, headers)


@contextlib.contextmanager
def _producer(
    task: str, subject: str, traceparent: str, headers: dict[str, str]
) -> Iterator[Span | None]:
    with span(
        f"send {task}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
        parent=traceparent,
    ) as current:
        propagate.inject(headers)
        yield current


def consumer_span(
    subject: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any]
) -> contextlib.AbstractContextManager[Span | None]:
    """The consumer span of one delivery, child of the producer span named by its headers."""
    if _provider is None:
        return contextlib.nullcontext()
    return span(
        f"process {attributes.get('shvya.task', 'job')}",
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            **attributes,
        },
        parent=(headers or {}).get("traceparent"),
    )


def mark_failed(error: BaseException) -> None:
    """Record an error the caller handled (a job that will be retried) on the active span."""
    if _provider is None:
        return
    current = trace.get_current_span()
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
