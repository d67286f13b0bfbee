"""Inbound webhooks route by the receiving account, in ingest in-process against real NATS and
PostgreSQL: WhatsApp notifications verified with the app secret of the account that owns the
business number, a number no company owns skipped with a record, and the email webhook that
never takes mail without a credential. Accounts are made through the real /v1 API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

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


@pytest.fixture
async def tenants(base_env: dict[str, str]) -> AsyncIterator[Tenants]:
    """Acme and Globex each own a number with its own app secret; Initech's account has none,
    so the platform's WHATSAPP_APP_SECRET signs for it."""
    async with ingest_client(base_env, SECRETS_KEYS=SECRETS_KEYS) as api:
        admin = base_env["ADMIN_TOKEN"]
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
        await add_account(api, initech, "whatsapp_cloud", {"phone_number_id": PHONE_C})
        yield Tenants(api, acme, globex, initech, admin)


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
    """Another company cannot claim Acme's number or the platform's own (409), config values of
    the wrong form are refused with the reason (422), and answers never carry a secret."""
    taken = await tenants.api.post(
        "/v1/channel-accounts",
        json={"channel": "whatsapp_cloud", "name": "x", "config": {"phone_number_id": PHONE_A}},
        headers=tenants.globex.auth,
    )
    assert taken.status_code == 409
    platform = await tenants.api.post(
        "/v1/channel-accounts",
        json={
            "channel": "whatsapp_cloud",
            "name": "platform",
            "config": {"phone_number_id": "106540352242922"},
        },
        headers=tenants.globex.auth,
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
