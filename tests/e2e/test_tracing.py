"""Tracing across the four service processes: their real OTLP/HTTP exporters post to a local
receiver, and one inbound message is one trace from the HTTP request to the provider call."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import eventually

pytestmark = pytest.mark.e2e

KEY = "sk-test-tracing"
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


def _ancestry(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The names of `span` and its parents, nearest first."""
    by_id = {s.span_id: s for s in spans}
    names = []
    current: ReceivedSpan | None = span
    while current is not None:
        names.append(f"{current.service}:{current.name}")
        current = by_id.get(current.parent_span_id)
    return names


async def test_one_trace_id_from_inbound_request_to_send(services):
    """The caller's traceparent is continued by ingest's request span, the ai.engage hop, the
    model call, the dispatch.send hop and the provider call: one trace id, one parent chain."""
    async with OtlpReceiver() as otlp, FakeOpenAI(api_key=KEY) as model:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        services.start("ingest", **otel, EMBEDDINGS_PROVIDER="none")
        services.start(
            "engage",
            **otel,
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=model.base_url,
            EMBEDDINGS_PROVIDER="none",
        )
        services.start("dispatch", **otel)
        services.start("scheduler", **otel)
        for proc in services.procs.values():
            await proc.wait_ready()

        trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
        async with httpx.AsyncClient(base_url=services.url) as client:
            response = await client.post(
                "/inbound-message",
                json={
                    "phone_number": "+1234567890",
                    "contact_name": "Test User",
                    "message_text": "Hello",
                    "channel": "whatsapp_cloud",
                },
                headers={"traceparent": f"00-{trace_id}-{caller}-01"},
            )
        assert response.status_code == 200, response.text

        def kinds(spans: list[ReceivedSpan]) -> set[tuple[str, str, int]]:
            return {(s.service, s.name, s.kind) for s in spans}

        wanted = {
            ("shvya-ingest", "send ai.engage", PRODUCER),
            ("shvya-engage", "process ai.engage", CONSUMER),
            ("shvya-engage", "send dispatch.send", PRODUCER),
            ("shvya-dispatch", "process dispatch.send", CONSUMER),
            ("shvya-dispatch", "log send", CLIENT),
        }

        async def received() -> list[ReceivedSpan]:
            return otlp.trace(trace_id)

        spans = await eventually(received, lambda s: wanted <= kinds(s))
        server = [s for s in spans if s.kind == SERVER and s.service == "shvya-ingest"]
        assert server and server[0].parent_span_id == caller
        chat = [s for s in spans if s.kind == CLIENT and s.service == "shvya-engage"]
        assert chat and chat[0].attributes["gen_ai.request.model"]
        provider = next(s for s in spans if s.name == "log send")
        chain = _ancestry(provider, spans)
        assert chain[:4] == [
            "shvya-dispatch:log send",
            "shvya-dispatch:process dispatch.send",
            "shvya-engage:send dispatch.send",
            "shvya-engage:process ai.engage",
        ]
        assert "shvya-ingest:send ai.engage" in chain
        assert chain[-1].startswith("shvya-ingest:") and server[0].span_id in {
            s.span_id for s in spans if f"{s.service}:{s.name}" == chain[-1]
        }
