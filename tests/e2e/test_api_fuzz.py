"""schemathesis against the running ingest's OpenAPI document, with a company's admin key:
over a thousand generated requests across every CRM operation, no server error, and every
answer matches the status codes, media types and schemas the document declares."""

from __future__ import annotations

import asyncio
import math

import httpx
import hypothesis
import pytest

from shvya_common.crypto import generate_key
from tests.fakes.graph_server import FakeGraph
from tests.keys import bearer

pytestmark = pytest.mark.e2e

TOTAL_CASES = 1500


def fuzz(url: str, key: str) -> tuple[int, int]:
    """Run the cases; returns (operations, cases run). Raises on the first failing check."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith("/v1/") and not result.ok().path.startswith("/v1/companies")
    ]
    per_operation = math.ceil(TOTAL_CASES / len(operations))
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    ran = 0
    for operation in operations:

        @hypothesis.settings(
            max_examples=per_operation,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal ran
            ran += 1
            case.call_and_validate(base_url=url, headers=bearer(key), checks=checks)

        run()
    return len(operations), ran


async def test_a_thousand_generated_requests_find_no_server_error_and_no_schema_break(services):
    """Every /v1 operation is called with generated data (valid and invalid) under an admin key;
    the whole run must have no 5xx and no answer outside its declared schema. A fake Graph
    stands in for Meta's, which ingest asks whether a WhatsApp number being registered is the
    company's (the fuzzer's tokens never are)."""
    async with FakeGraph() as graph:
        services.start(
            "ingest",
            EMBEDDINGS_PROVIDER="none",
            SECRETS_KEYS=f"kf1:{generate_key()}",
            API_RATE_LIMIT="100000/minute",
            WHATSAPP_CLOUD_BASE_URL=graph.base_url,
        )
        await services.procs["ingest"].wait_ready()
        async with httpx.AsyncClient(base_url=services.url) as client:
            made = await client.post(
                "/v1/companies",
                json={"name": "Fuzz"},
                headers=bearer(services.base_env["ADMIN_TOKEN"]),
            )
            assert made.status_code == 201, made.text
        key = made.json()["admin_key"]["key"]
        operations, ran = await asyncio.to_thread(fuzz, services.url, key)
        assert operations >= 30 and ran >= 1000, (operations, ran)
        log = services.procs["ingest"].log_text()
        assert '"internal_error"' not in log
