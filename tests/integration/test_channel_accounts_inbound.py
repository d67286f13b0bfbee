"""Inbound webhooks route by the receiving account, in ingest in-process against real NATS and
PostgreSQL: WhatsApp notifications verified with the app secret of the account that owns the
business number, a number no company owns skipped with a record, and the email webhook that
never takes mail without a credential. Accounts are made through the real /v1 API, each
company's number proven against a fake Graph that shows it only to that company's token."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fakes.graph_server import FakeGraph
from tests.integration.channel_accounts_support import (
    SECRETS_KEYS,
    Tenant,
    add_account,
    make_tenant,
    plaintext_hits,
)
from tests.integration.webhook_support import (
    APP_SECRET,
    database,
    ingest_client,
    meta_payload,
    signature,
    text_message,
)
from tests.keys import bearer

pytestmark = pytest.mark.integration

APP_SECRET_A = "acme-app-secret-77aa01"
APP_SECRET_B = "globex-app-secret-88bb02"
PHONE_A, PHONE_B, PHONE_C = "110000000000001", "220000000000002", "330000000000003"
WABA_A = "310000000000001"
TOKEN_A, TOKEN_B = "EAAG-acme-inbound-token-1f", "EAAG-globex-inbound-token-2e"


@dataclass
class Tenants:
    api: httpx.AsyncClient
    acme: Tenant
    globex: Tenant
    initech: Tenant
    admin: str
    graph: FakeGraph


@pytest.fixture
async def tenants(base_env: dict[str, str]) -> AsyncIterator[Tenants]:
    """Acme and Globex each own a number with its own app secret, proven with their own tokens;
    Initech's account has neither (the operator attached it), so the platform's
    WHATSAPP_APP_SECRET signs for it."""
    async with FakeGraph(token=TOKEN_A, phone_number_id=PHONE_A, waba_id=WABA_A) as graph:
        graph.add_number(PHONE_B, TOKEN_B, "320000000000002")
        async with ingest_client(
            base_env, SECRETS_KEYS=SECRETS_KEYS, WHATSAPP_CLOUD_BASE_URL=graph.base_url
        ) as api:
            yield await _make_tenants(api, base_env["ADMIN_TOKEN"], graph)


async def _make_tenants(api: httpx.AsyncClient, admin: str, graph: FakeGraph) -> Tenants:
    acme = await make_tenant(api, admin, "Acme")
    globex = await make_tenant(api, admin, "Globex")
    initech = await make_tenant(api, admin, "Initech")
    await add_account(
        api,
        acme,
        "whatsapp_cloud",
        {"phone_number_id": PHONE_A, "waba_id": WABA_A},
        {"access_token": TOKEN_A, "app_secret": APP_SECRET_A},
    )
    await add_account(
        api,
        globex,
        "whatsapp_cloud",
        {"phone_number_id": PHONE_B},
        {"access_token": TOKEN_B, "app_secret": APP_SECRET_B},
    )
    await add_account(api, initech, "whatsapp_cloud", {"phone_number_id": PHONE_C}, operator=admin)
    return Tenants(api, acme, globex, initech, admin, graph)


async def _post(api: httpx.AsyncClient, payload: dict[str, Any], secret: str) -> httpx.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return await api.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "content-type": "application/json",
            "x-hub-signature-256": signature(body, secret),
        },
    )


def _message(number: str, wamid: str, text: str) -> dict[str, Any]:
    return meta_payload([text_message(wamid, "16505551234", text)], phone_number_id=number)


async def _filed(db_url: str) -> list[tuple[uuid.UUID, str]]:
    async with database(db_url) as conn:
        rows = await conn.fetch("SELECT company_id, body FROM messages ORDER BY body")
    return [(r["company_id"], r["body"]) for r in rows]


async def test_a_number_is_filed_into_its_owner_only_with_the_owners_app_secret(tenants, db_url):
    """Acme's number signed with Acme's app secret files into Acme; signed with Globex's secret
    or the platform's it is refused (403) and nothing is written."""
    payload = _message(PHONE_A, "wamid.A1", "for acme")
    for secret in (APP_SECRET_B, APP_SECRET):
        refused = await _post(tenants.api, payload, secret)
        assert refused.status_code == 403, refused.text
    assert await _filed(db_url) == []
    accepted = await _post(tenants.api, payload, APP_SECRET_A)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["messages"] == 1
    globex = await _post(tenants.api, _message(PHONE_B, "wamid.B1", "for globex"), APP_SECRET_B)
    assert globex.status_code == 200
    assert await _filed(db_url) == [
        (tenants.acme.id, "for acme"),
        (tenants.globex.id, "for globex"),
    ]


async def test_an_account_without_its_own_app_secret_is_verified_with_the_platforms(
    tenants, db_url
):
    """Initech's account sets no app secret, so WHATSAPP_APP_SECRET signs its number."""
    payload = _message(PHONE_C, "wamid.C1", "for initech")
    assert (await _post(tenants.api, payload, APP_SECRET_A)).status_code == 403
    assert (await _post(tenants.api, payload, APP_SECRET)).status_code == 200
    assert await _filed(db_url) == [(tenants.initech.id, "for initech")]


async def test_a_number_no_company_owns_is_skipped_with_a_record(tenants, db_url, base_env):
    """A payload for an unowned number, signed with the platform's secret, answers 200 with the
    change skipped and one `whatsapp.entry_skipped` event that belongs to no company; without
    a platform secret to verify it, it is refused and nothing is written."""
    payload = _message("999000111", "wamid.X1", "for nobody")
    answer = await _post(tenants.api, payload, APP_SECRET)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["messages"], answer.json()["skipped"]) == (0, 1)
    assert await _filed(db_url) == []
    async with database(db_url) as conn:
        events = await conn.fetch(
            "SELECT company_id, payload FROM events WHERE type = 'whatsapp.entry_skipped'"
        )
    assert [(e["company_id"], e["payload"]["reason"]) for e in events] == [(None, "unrouted")]
    assert events[0]["payload"]["phone_number_id"] == "999000111"

    async with ingest_client(base_env, WHATSAPP_APP_SECRET="") as bare:
        refused = await _post(bare, _message("999000111", "wamid.X2", "again"), APP_SECRET)
        assert refused.status_code == 403
        assert "no company owns 999000111" in refused.json()["detail"]
    assert await _filed(db_url) == []


async def test_a_mixed_delivery_keeps_only_the_changes_its_signature_proves(tenants, db_url):
    """One delivery naming Acme's and Globex's numbers, signed with Acme's secret, files Acme's
    message and skips Globex's as unverified: it never lands in either company unproven."""
    payload = _message(PHONE_A, "wamid.A2", "acme part")
    other = _message(PHONE_B, "wamid.B2", "globex part")
    payload["entry"] += other["entry"]
    answer = await _post(tenants.api, payload, APP_SECRET_A)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["messages"], answer.json()["skipped"]) == (1, 1)
    assert await _filed(db_url) == [(tenants.acme.id, "acme part")]
    async with database(db_url) as conn:
        reasons = await conn.fetch(
            "SELECT payload->>'reason' AS reason, payload->>'phone_number_id' AS number"
            " FROM events WHERE type = 'whatsapp.entry_skipped'"
        )
    assert [(r["reason"], r["number"]) for r in reasons] == [("unverified", PHONE_B)]


async def test_template_updates_apply_to_the_company_owning_the_waba(tenants, db_url):
    """A template status update for Acme's WhatsApp Business Account changes Acme's template
    and not Globex's of the same name."""
    async with database(db_url) as conn:
        for tenant in (tenants.acme, tenants.globex):
            await conn.execute(
                "INSERT INTO templates (company_id, name, channel, language, body, status)"
                " VALUES ($1, 'offer', 'whatsapp_cloud', 'en_US', 'Hi', 'approved')",
                tenant.id,
            )
    update = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_A,
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": "PAUSED",
                            "message_template_id": 123,
                            "message_template_name": "offer",
                            "message_template_language": "en_US",
                            "reason": "LOW_QUALITY",
                        },
                    }
                ],
            }
        ],
    }
    assert (await _post(tenants.api, update, APP_SECRET_B)).status_code == 403
    answer = await _post(tenants.api, update, APP_SECRET_A)
    assert answer.status_code == 200, answer.text
    async with database(db_url) as conn:
        statuses = dict(await conn.fetch("SELECT company_id, status FROM templates"))
    assert statuses == {tenants.acme.id: "paused", tenants.globex.id: "approved"}


async def test_the_api_keeps_numbers_to_one_owner_and_checks_config(tenants):
    """Acme's number attached to another company, even by the operator, and the platform's own
    number claimed by any company but the default are refused (409); config values of the wrong
    form are refused with the reason (422), and answers never carry a secret."""
    taken = await tenants.api.post(
        f"/v1/companies/{tenants.globex.id}/channel-accounts",
        json={"channel": "whatsapp_cloud", "name": "x", "config": {"phone_number_id": PHONE_A}},
        headers=bearer(tenants.admin),
    )
    assert taken.status_code == 409, taken.text
    platform = await tenants.api.post(
        f"/v1/companies/{tenants.globex.id}/channel-accounts",
        json={
            "channel": "whatsapp_cloud",
            "name": "platform",
            "config": {"phone_number_id": "106540352242922"},
        },
        headers=bearer(tenants.admin),
    )
    assert platform.status_code == 409, platform.text
    bad = await tenants.api.post(
        "/v1/channel-accounts",
        json={"channel": "email", "name": "m", "config": {"smtp_port": "25x", "from_address": "x"}},
        headers=tenants.globex.auth,
    )
    assert bad.status_code == 422
    assert "smtp_port" in bad.text and "from_address" in bad.text
    listed = await tenants.api.get("/v1/channel-accounts", headers=tenants.acme.auth)
    assert APP_SECRET_A not in listed.text and TOKEN_A not in listed.text
    assert listed.json()[0]["secrets_set"] == ["access_token", "app_secret"]


async def _routes(db_url: str) -> dict[str, uuid.UUID]:
    async with database(db_url) as conn:
        rows = await conn.fetch(
            "SELECT address, company_id FROM inbound_routes WHERE channel = 'whatsapp_cloud'"
        )
    return {r["address"]: r["company_id"] for r in rows}


async def test_a_company_registers_only_a_number_its_own_token_can_see(tenants, db_url):
    """Typing another business's phone_number_id (or WABA) does not make it yours: Graph must
    show it to the account's own access token. Acme's number with Globex's token, a WABA
    Globex's token cannot see, and a number without a token are refused with the reason (422),
    Graph unreachable is a 502, and none of them writes an account or a route."""
    routes = await _routes(db_url)

    async def claim(config: dict[str, Any], secrets: dict[str, str]) -> httpx.Response:
        return await tenants.api.post(
            "/v1/channel-accounts",
            json={"channel": "whatsapp_cloud", "name": "n", "config": config, "secrets": secrets},
            headers=tenants.globex.auth,
        )

    stolen = await claim({"phone_number_id": PHONE_A}, {"access_token": TOKEN_B})
    assert stolen.status_code == 422, stolen.text
    assert f"cannot see phone number {PHONE_A}" in stolen.text and TOKEN_B not in stolen.text
    waba = await claim({"phone_number_id": PHONE_B, "waba_id": WABA_A}, {"access_token": TOKEN_B})
    assert waba.status_code == 422 and f"WhatsApp Business Account {WABA_A}" in waba.text
    tokenless = await claim({"phone_number_id": "440000000000004"}, {})
    assert tokenless.status_code == 422 and "platform operator" in tokenless.text
    # The account's own base_url is never asked: a server the company chose would vouch for
    # anything.
    vouched = await claim(
        {"phone_number_id": PHONE_A, "base_url": "http://127.0.0.1:9/yes-it-is-yours"},
        {"access_token": TOKEN_B},
    )
    assert vouched.status_code == 422, vouched.text
    await tenants.graph.close()
    unreachable = await claim({"phone_number_id": PHONE_B}, {"access_token": TOKEN_B})
    assert unreachable.status_code == 502 and "try again" in unreachable.text
    listed = await tenants.api.get("/v1/channel-accounts", headers=tenants.globex.auth)
    assert len(listed.json()) == 1
    assert await _routes(db_url) == routes


async def test_moving_an_account_to_another_number_needs_the_same_proof(tenants, db_url):
    """A PATCH that changes the number is proven with the stored token: to Acme's number it is
    refused (422) and the route stays; a PATCH that changes nothing Graph vouches for (the
    app secret) needs no Graph at all."""
    account = (await tenants.api.get("/v1/channel-accounts", headers=tenants.globex.auth)).json()
    url = f"/v1/channel-accounts/{account[0]['id']}"
    moved = await tenants.api.patch(
        url, json={"config": {"phone_number_id": PHONE_A}}, headers=tenants.globex.auth
    )
    assert moved.status_code == 422, moved.text
    assert (await _routes(db_url))[PHONE_B] == tenants.globex.id
    asked = len(tenants.graph.requests)
    await tenants.graph.close()
    rotated = await tenants.api.patch(
        url,
        json={"secrets": {"app_secret": "globex-app-secret-rotated"}},
        headers=tenants.globex.auth,
    )
    assert rotated.status_code == 200, rotated.text
    assert len(tenants.graph.requests) == asked


async def test_email_webhook_files_into_the_company_of_the_key(tenants, db_url):
    """A company's ingest key on POST /webhooks/email files the mail into that company; naming
    another company with it is 403, and no credential at all is 401."""
    created = await tenants.api.post(
        "/v1/api-keys", json={"name": "mail", "role": "ingest"}, headers=tenants.globex.auth
    )
    assert created.status_code == 201, created.text
    ingest_key = created.json()["key"]
    mail = {
        "from": "Priya <priya@example.com>",
        "to": "sales@globex.example",
        "subject": "Hi",
        "text": "Pricing please",
        "message_id": "<m1@example.com>",
    }
    headers = {"Authorization": f"Bearer {ingest_key}"}
    assert (await tenants.api.post("/webhooks/email", json=mail)).status_code == 401
    other = await tenants.api.post(
        "/webhooks/email", json={**mail, "company_id": str(tenants.acme.id)}, headers=headers
    )
    assert other.status_code == 403
    filed = await tenants.api.post("/webhooks/email", json=mail, headers=headers)
    assert filed.status_code == 200, filed.text
    assert await _filed(db_url) == [(tenants.globex.id, "Pricing please")]


async def test_app_secrets_are_sealed_at_rest(tenants, db_url):
    """The app secrets and tokens stored through the API are nowhere in plain text."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        hits = await plaintext_hits(pool, [APP_SECRET_A, APP_SECRET_B, TOKEN_A, TOKEN_B])
    finally:
        await pool.close()
    assert hits == []
