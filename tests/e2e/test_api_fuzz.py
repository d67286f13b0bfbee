"""schemathesis against the running ingest's OpenAPI document, with a company's admin key:
over a thousand generated requests across every CRM operation, no server error, and every
answer matches the status codes, media types and schemas the document declares. The company
is populated first (a lead with messages, pipelines, a template, a sequence with an enrolment,
a webhook endpoint with a delivery, a KB document, a suppression, ...), and half the generated
cases of an operation taking ids use those real ids, so the routes' found paths run too."""

from __future__ import annotations

import asyncio
import math

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from shvya_common.crypto import generate_key
from tests.fakes.graph_server import FakeGraph
from tests.integration.test_tenants import populate
from tests.keys import bearer

pytestmark = pytest.mark.e2e

TOTAL_CASES = 1500
LEADS = [
    ("+14155550123", "Hi, how much is a 6 kW system?"),
    ("+14155550123", "And can it be installed in June?"),
    ("+4915112345678", "Guten Tag, ich habe eine Frage"),
]


def fuzz(url: str, key: str, ids: dict[str, str]) -> tuple[int, int, int]:
    """Run the cases; returns (operations, cases run, cases with real ids). Raises on the
    first failing check."""
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
    # Deletions last, so the real ids stay found for every other operation.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    per_operation = math.ceil(TOTAL_CASES / len(operations))
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    ran = real = 0
    for operation in operations:

        @hypothesis.settings(
            max_examples=per_operation,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy(), use_ids=st.booleans())
        def run(case: schemathesis.Case, use_ids: bool) -> None:
            nonlocal ran, real
            ran += 1
            if use_ids and case.path_parameters:
                known = {name: ids[name] for name in case.path_parameters if name in ids}
                if known:
                    case.path_parameters = {**case.path_parameters, **known}
                    real += 1
            case.call_and_validate(base_url=url, headers=bearer(key), checks=checks)

        run()
    return len(operations), ran, real


async def test_a_thousand_generated_requests_find_no_server_error_and_no_schema_break(services):
    """Every /v1 operation is called with generated data (valid and invalid) under an admin key
    of a populated company, half the time with the ids of its real rows; the whole run must
    have no 5xx and no answer outside its declared schema. A fake Graph stands in for Meta's,
    which ingest asks whether a WhatsApp number being registered is the company's (the
    fuzzer's tokens never are)."""
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
            ids = await populate(client, key, services.base_env["DATABASE_URL"])
            for phone, text in LEADS:  # more leads, one with a conversation, for the lists
                filed = await client.post(
                    "/inbound-message",
                    json={"phone_number": phone, "message_text": text, "channel": "log"},
                    headers=bearer(key),
                )
                assert filed.status_code == 200, filed.text
        ids["name"] = "funnel"
        operations, ran, real = await asyncio.to_thread(fuzz, services.url, key, ids)
        assert operations >= 30 and ran >= 1000 and real >= 200, (operations, ran, real)
        log = services.procs["ingest"].log_text()
        assert '"internal_error"' not in log
