"""Tenants against real PostgreSQL and NATS: the operator creates companies and their keys,
every /v1 route takes its company from the credential, an id of another company is never
found, roles are enforced on every route, and limits and secrets behave."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from shvya_common.crypto import generate_key
from shvya_common.webhooks.repository import WebhookRepository
from shvya_ingest import (
    campaigns_api,
    kb_api,
    mailbox_api,
    outbound_api,
    reports_api,
    schedules_api,
    sequences_api,
    v1,
)
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from tests.keys import bearer

pytestmark = pytest.mark.integration

SECRETS = f"kt1:{generate_key()}"


@asynccontextmanager
async def api(env: dict[str, str], **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    values = {k.lower(): v for k, v in {**env, "SECRETS_KEYS": SECRETS, **overrides}.items()}
    app = create_app(IngestSettings(**values))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


async def new_company(client: httpx.AsyncClient, token: str, name: str) -> dict[str, Any]:
    made = await client.post("/v1/companies", json={"name": name}, headers=bearer(token))
    assert made.status_code == 201, made.text
    body = made.json()
    return {"id": body["company"]["id"], "admin": body["admin_key"]["key"]}


async def key(client: httpx.AsyncClient, admin: str, role: str) -> str:
    made = await client.post(
        "/v1/api-keys", json={"name": role, "role": role}, headers=bearer(admin)
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def inbound(phone: str, text: str = "Hello") -> dict[str, str]:
    return {"phone_number": phone, "contact_name": "Ana", "message_text": text, "channel": "log"}


async def test_the_operator_creates_a_company_whose_first_key_is_shown_once(
    base_env, admin_token, db_url
):
    """POST /v1/companies (operator only) returns the company and an admin key that works;
    listings show only its prefix, the database only its hash, and the operator token is not
    a company's key."""
    async with api(base_env) as client:
        denied = await client.post("/v1/companies", json={"name": "X"})
        assert denied.status_code == 401
        acme = await new_company(client, admin_token, "Acme")
        assert (
            await client.post("/v1/companies", json={"name": "Y"}, headers=bearer(acme["admin"]))
        ).status_code == 403
        mine = await client.get("/v1/company", headers=bearer(acme["admin"]))
        assert mine.status_code == 200 and mine.json()["name"] == "Acme"
        assert (await client.get("/v1/company", headers=bearer(admin_token))).status_code == 403
        listed = (await client.get("/v1/api-keys", headers=bearer(acme["admin"]))).json()
        assert len(listed) == 1 and "key" not in listed[0]
        assert acme["admin"].startswith(listed[0]["prefix"])
        pipelines = (await client.get("/v1/pipelines", headers=bearer(acme["admin"]))).json()
        assert [s["name"] for s in pipelines[0]["stages"]] == [
            "New",
            "Contacted",
            "Qualified",
            "Proposal",
            "Closed",
        ]
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT key_hash FROM api_keys")
        audit = await conn.fetch(
            "SELECT payload->>'action' AS action, payload->>'actor' AS actor FROM events"
            " WHERE type = 'audit.action'"
        )
    finally:
        await conn.close()
    assert acme["admin"] not in stored and len(stored) == 64
    actions = {r["action"] for r in audit}
    assert {"company.created", "api_key.created"} <= actions
    assert all(r["actor"] == "operator" for r in audit)


async def test_inbound_messages_file_into_the_company_of_the_key(base_env, admin_token, db_url):
    """An ingest or admin key files into its own company; an agent key and the operator token
    are refused; with INBOUND_AUTH=required a request without a key is refused too."""
    async with api(base_env, INBOUND_AUTH="required") as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        ingest_key = await key(client, acme["admin"], "ingest")
        agent_key = await key(client, acme["admin"], "agent")
        assert (await client.post("/inbound-message", json=inbound("+15550001"))).status_code == 401
        ok = await client.post(
            "/inbound-message", json=inbound("+15550001"), headers=bearer(ingest_key)
        )
        assert ok.status_code == 200, ok.text
        for refused in (agent_key, admin_token):
            response = await client.post(
                "/inbound-message", json=inbound("+15550002"), headers=bearer(refused)
            )
            assert response.status_code == 403
        mismatch = await client.post(
            "/inbound-message",
            json={**inbound("+15550003"), "company_id": beta["id"]},
            headers=bearer(ingest_key),
        )
        assert mismatch.status_code == 403
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT company_id::text FROM leads")
    finally:
        await conn.close()
    assert [r["company_id"] for r in rows] == [acme["id"]]


def test_anonymous_inbound_is_refused_off_loopback_and_a_weak_link_secret_stops_start_up(
    base_env,
):
    """INBOUND_AUTH must be 'required' on a non-loopback bind, and LINK_SECRET must be a long
    random value: a default, placeholder or short one stops ingest before it starts."""
    values = {k.lower(): v for k, v in base_env.items()}
    with pytest.raises(ValidationError, match="INBOUND_AUTH=required"):
        IngestSettings(**values, host="0.0.0.0")
    assert IngestSettings(**values, host="0.0.0.0", inbound_auth="required").host == "0.0.0.0"
    for weak in ("dev-only-link-secret-change-me", "short"):
        with pytest.raises(ValueError, match="LINK_SECRET"):
            create_app(IngestSettings(**values, link_secret=weak))


# --- isolation and roles, on every route -----------------------------------------------------


def v1_routes() -> list[tuple[str, str, Any]]:
    """(method, path, route) of every company-scoped API route."""
    found = []
    for router in [
        *v1.routers(),
        kb_api.router,
        mailbox_api.router,
        sequences_api.router,
        outbound_api.router,
        campaigns_api.router,
        schedules_api.router,
        reports_api.router,
    ]:
        for route in router.routes:
            for method in sorted(route.methods - {"HEAD"}):
                found.append((method, route.path, route))
    return found


def roles_of(route: Any) -> frozenset[str] | None:
    """The key roles a route accepts (None: operator only)."""

    def walk(dependant: Any) -> frozenset[str] | None:
        for dep in dependant.dependencies:
            roles = getattr(dep.call, "roles", None)
            if roles is not None:
                return frozenset(roles)
            inner = walk(dep)
            if inner is not None:
                return inner
        return None

    return walk(route.dependant)


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v1/users/{user_id}"): {"full_name": "Z"},
    ("PATCH", "/v1/pipelines/{pipeline_id}"): {"name": "Z"},
    ("POST", "/v1/pipelines/{pipeline_id}/stages"): {"name": "Z"},
    ("POST", "/v1/pipelines/{pipeline_id}/stages/order"): {"stage_ids": [str(uuid.uuid4())]},
    ("PATCH", "/v1/stages/{stage_id}"): {"name": "Z"},
    ("PATCH", "/v1/leads/{lead_id}"): {"contact_name": "Z"},
    ("POST", "/v1/leads/{lead_id}/stage"): {"stage": "Qualified"},
    ("POST", "/v1/leads/{lead_id}/merge"): {"duplicate_id": str(uuid.uuid4())},
    ("POST", "/v1/leads/{lead_id}/messages"): {"text": "hi"},
    ("PATCH", "/v1/templates/{template_id}"): {"body": "Z"},
    ("PATCH", "/v1/channel-accounts/{account_id}"): {"config": {}},
    ("PUT", "/v1/kb/documents/{doc_id}"): {"content": "Z"},
    ("PATCH", "/v1/sequences/{sequence_id}"): {"name": "Z"},
    ("PUT", "/v1/sequences/{sequence_id}/steps"): {"steps": [{"kind": "send", "text": "Z"}]},
    ("PATCH", "/v1/sequences/{sequence_id}/steps/{step_id}"): {"text": "Z"},
    ("POST", "/v1/sequences/{sequence_id}/preview"): {"lead_id": str(uuid.uuid4())},
    ("POST", "/v1/sequences/{sequence_id}/enrolments"): {"lead_id": str(uuid.uuid4())},
    ("PATCH", "/v1/webhooks/endpoints/{endpoint_id}"): {"description": "Z"},
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret"): {"overlap_seconds": 0},
    ("PATCH", "/v1/reminders/{reminder_id}"): {"title": "Z"},
    ("PATCH", "/v1/campaigns/{campaign_id}"): {"name": "Z"},
    ("POST", "/v1/campaigns/{campaign_id}/preview"): {"lead_id": str(uuid.uuid4())},
    ("POST", "/v1/campaigns/{campaign_id}/send"): {},
    ("PATCH", "/v1/schedules/{schedule_id}"): {"name": "Z"},
}
QUERIES = {("DELETE", "/v1/suppressions/{suppression_id}"): {"reason": "test"}}
# Company-scoped routes whose path parameter names no row of a company: every company reads
# its own report of that name, so there is no other company's id to try.
NOT_AN_ID = {"/v1/reports/{name}"}


async def populate(client: httpx.AsyncClient, admin: str, db_url: str) -> dict[str, str]:
    """One of everything for a company, through its own API; returns the ids by path param."""
    h = bearer(admin)
    ids: dict[str, str] = {}
    ingest_key = await key(client, admin, "ingest")
    filed = await client.post(
        "/inbound-message", json=inbound("+15557777"), headers=bearer(ingest_key)
    )
    assert filed.status_code == 200, filed.text
    ids["message_id"] = filed.json()["message_id"]
    ids["index"] = "0"
    conn = await asyncpg.connect(db_url)
    try:
        ids["lead_id"] = str(
            await conn.fetchval(
                "SELECT lead_id FROM messages WHERE id = $1", uuid.UUID(ids["message_id"])
            )
        )
        # A received file on the message, so its media routes have something to refuse.
        await conn.execute(
            "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind)"
            " SELECT company_id, id, 'whatsapp_cloud', 'm1', 'image' FROM messages WHERE id = $1",
            uuid.UUID(ids["message_id"]),
        )
    finally:
        await conn.close()
    pipeline = (await client.post("/v1/pipelines", json={"name": "Side"}, headers=h)).json()
    ids["pipeline_id"] = pipeline["id"]
    ids["stage_id"] = pipeline["stages"][1]["id"]
    template = await client.post(
        "/v1/templates",
        json={"name": "t1", "channel": "email", "subject": "S", "body": "B"},
        headers=h,
    )
    ids["template_id"] = template.json()["id"]
    suppression = await client.post(
        "/v1/suppressions",
        json={"channel": "email", "address": "x@example.org", "reason": "asked"},
        headers=h,
    )
    ids["suppression_id"] = suppression.json()["id"]
    user = await client.post(
        "/v1/users", json={"email": "rep@example.org", "role": "agent"}, headers=h
    )
    ids["user_id"] = user.json()["id"]
    listed = (await client.get("/v1/api-keys", headers=h)).json()
    ids["key_id"] = next(k["id"] for k in listed if k["role"] == "ingest")
    account = await client.post(
        "/v1/channel-accounts",
        json={
            "channel": "whatsapp_cloud",
            "name": "main",
            # No number: registering one needs Graph to prove the company owns it.
            "config": {"api_version": "v23.0"},
            "secrets": {"access_token": "EAAG-secret-token-value"},
        },
        headers=h,
    )
    assert account.status_code == 201, account.text
    ids["account_id"] = account.json()["id"]
    doc = await client.post("/v1/kb/documents", json={"content": "Prices: 10 EUR"}, headers=h)
    assert doc.status_code == 201, doc.text
    ids["doc_id"] = doc.json()["id"]
    ids["mailbox_id"] = str(uuid.uuid4())  # none exists; another company's id must 404 too
    sequence = await client.post(
        "/v1/sequences",
        json={"name": "S", "channel": "log", "steps": [{"kind": "send", "text": "Hi"}]},
        headers=h,
    )
    assert sequence.status_code == 201, sequence.text
    ids["sequence_id"] = sequence.json()["id"]
    ids["step_id"] = sequence.json()["steps"][0]["id"]
    enrolled = await client.post(
        f"/v1/sequences/{ids['sequence_id']}/enrolments",
        json={"lead_id": ids["lead_id"]},
        headers=h,
    )
    assert enrolled.status_code == 201, enrolled.text
    ids["enrolment_id"] = enrolled.json()["enrolments"][0]["enrolment_id"]
    endpoint = await client.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://hooks.example.org/shvya", "event_types": ["lead.created"]},
        headers=h,
    )
    assert endpoint.status_code == 201, endpoint.text
    ids["endpoint_id"] = endpoint.json()["id"]
    reminder = await client.post(
        "/v1/reminders",
        json={"remind_at": "2099-01-01T09:00:00+00:00", "title": "Call", "lead_id": ids["lead_id"]},
        headers=h,
    )
    assert reminder.status_code == 201, reminder.text
    ids["reminder_id"] = reminder.json()["id"]
    campaign = await client.post(
        "/v1/campaigns",
        json={"name": "C", "template": {"subject": "S", "text": "Hi"}},
        headers=h,
    )
    assert campaign.status_code == 201, campaign.text
    ids["campaign_id"] = campaign.json()["id"]
    schedule = await client.post(
        "/v1/schedules",
        json={"name": "R", "kind": "reports", "cron": "0 9 * * 1"},
        headers=h,
    )
    assert schedule.status_code == 201, schedule.text
    ids["schedule_id"] = schedule.json()["id"]
    # Deliveries are written by the scheduler's fan-out, which this test does not run.
    conn = await asyncpg.connect(db_url)
    try:
        company_id, event_id = await conn.fetchrow(
            "SELECT company_id, id FROM events WHERE lead_id = $1 AND type = 'lead.created'",
            uuid.UUID(ids["lead_id"]),
        )
        fanned = await WebhookRepository.fan_out(conn, company_id, event_id, "lead.created")
    finally:
        await conn.close()
    assert len(fanned) == 1
    ids["delivery_id"] = str(fanned[0][0])
    return ids


SNAPSHOT = """
SELECT
 (SELECT jsonb_agg(to_jsonb(t) - 'updated_at' ORDER BY id)
  FROM (SELECT * FROM leads WHERE company_id = $1) t) AS leads,
 (SELECT count(*) FROM messages WHERE company_id = $1) AS messages,
 (SELECT jsonb_agg(to_jsonb(p) ORDER BY id) FROM pipelines p WHERE company_id = $1) AS pipelines,
 (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.id) FROM stages s
  JOIN pipelines p ON p.id = s.pipeline_id WHERE p.company_id = $1) AS stages,
 (SELECT jsonb_agg(to_jsonb(t) ORDER BY id) FROM templates t WHERE company_id = $1) AS templates,
 (SELECT jsonb_agg(to_jsonb(s) ORDER BY id) FROM suppressions s
  WHERE company_id = $1) AS suppressions,
 (SELECT jsonb_agg(to_jsonb(u) ORDER BY id) FROM users u WHERE company_id = $1) AS users,
 (SELECT jsonb_agg(to_jsonb(k) - 'last_used_at' ORDER BY id) FROM api_keys k
  WHERE company_id = $1) AS keys,
 (SELECT jsonb_agg(to_jsonb(a) ORDER BY id) FROM channel_accounts a
  WHERE company_id = $1) AS accounts,
 (SELECT count(*) FROM ai_kb_docs WHERE company_id = $1) AS docs,
 (SELECT jsonb_agg(to_jsonb(s) ORDER BY id) FROM sequences s WHERE company_id = $1) AS sequences,
 (SELECT jsonb_agg(to_jsonb(st) ORDER BY st.id) FROM sequence_steps st
  JOIN sequences s ON s.id = st.sequence_id WHERE s.company_id = $1) AS steps,
 (SELECT jsonb_agg(to_jsonb(e) ORDER BY id) FROM sequence_enrolments e
  WHERE company_id = $1) AS enrolments,
 (SELECT jsonb_agg(to_jsonb(w) ORDER BY id) FROM webhook_endpoints w
  WHERE company_id = $1) AS endpoints,
 (SELECT jsonb_agg(to_jsonb(d) ORDER BY id) FROM webhook_deliveries d
  WHERE company_id = $1) AS deliveries,
 (SELECT jsonb_agg(to_jsonb(r) ORDER BY id) FROM reminders r WHERE company_id = $1) AS reminders,
 (SELECT jsonb_agg(to_jsonb(c) ORDER BY id) FROM campaigns c WHERE company_id = $1) AS campaigns,
 (SELECT jsonb_agg(to_jsonb(s) ORDER BY id) FROM schedules s WHERE company_id = $1) AS schedules
"""


async def test_no_route_reads_or_writes_another_companys_data(base_env, admin_token, db_url):
    """Every /v1 route that takes an id, called with another company's admin key and that id,
    answers 404, and the owner's rows are unchanged; lists show nothing of the other company."""
    env = {**base_env, "EMBEDDINGS_PROVIDER": "none"}
    async with api(env) as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        ids = await populate(client, acme["admin"], db_url)
        conn = await asyncpg.connect(db_url)
        try:
            before = await conn.fetchrow(SNAPSHOT, uuid.UUID(acme["id"]))
            tried = []
            for method, path, _ in v1_routes():
                params = re.findall(r"{(\w+)}", path)
                if not params or path.startswith("/v1/companies") or path in NOT_AN_ID:
                    continue
                url = path.format(**{p: ids[p] for p in params})
                response = await client.request(
                    method,
                    url,
                    json=BODIES.get((method, path)),
                    params=QUERIES.get((method, path)),
                    headers=bearer(beta["admin"]),
                )
                tried.append(path)
                assert response.status_code == 404, (method, path, response.text)
            after = await conn.fetchrow(SNAPSHOT, uuid.UUID(acme["id"]))
        finally:
            await conn.close()
        assert dict(after) == dict(before)
        assert len(tried) >= 70
        for listing, key_ in (
            ("/v1/leads", "items"),
            ("/v1/templates", "items"),
            ("/v1/suppressions", "items"),
            ("/v1/users", "items"),
            ("/v1/channel-accounts", "items"),
            ("/v1/kb/documents", "documents"),
            ("/v1/events", "items"),
            ("/v1/sequences", "sequences"),
            ("/v1/webhooks/endpoints", "endpoints"),
            ("/v1/reminders", "reminders"),
            ("/v1/campaigns", "campaigns"),
            ("/v1/schedules", None),
        ):
            answer = await client.get(listing, headers=bearer(beta["admin"]))
            assert answer.status_code == 200, (listing, answer.text)
            seen = answer.json()
            items = seen.get(key_, []) if isinstance(seen, dict) else seen
            ours = {str(i) for i in ids.values()}
            assert not [i for i in items if str(i.get("id")) in ours], listing
        report = await client.get("/v1/reports/funnel", headers=bearer(beta["admin"]))
        assert report.status_code == 200, report.text
        assert report.json()["company_id"] == beta["id"]


async def test_every_route_refuses_missing_credentials_and_wrong_roles(base_env, admin_token):
    """Without a credential every /v1 route answers 401; with a key whose role the route does
    not accept (or the operator token on a company route) it answers 403, never data."""
    async with api({**base_env, "EMBEDDINGS_PROVIDER": "none"}) as client:
        acme = await new_company(client, admin_token, "Acme")
        keys = {
            "admin": acme["admin"],
            "agent": await key(client, acme["admin"], "agent"),
            "ingest": await key(client, acme["admin"], "ingest"),
        }
        checked = 0
        for method, path, route in v1_routes():
            url = re.sub(r"{\w+}", str(uuid.uuid4()), path)
            body = BODIES.get((method, path))
            none = await client.request(method, url, json=body, params=QUERIES.get((method, path)))
            assert none.status_code == 401, (method, path, none.text)
            roles = roles_of(route)
            callers = {**keys, "operator": admin_token}
            for name, credential in callers.items():
                allowed = (roles is None and name == "operator") or (
                    roles is not None and name in roles
                )
                if allowed:
                    continue
                response = await client.request(
                    method,
                    url,
                    json=body,
                    params=QUERIES.get((method, path)),
                    headers=bearer(credential),
                )
                assert response.status_code == 403, (method, path, name, response.text)
                checked += 1
        assert checked > 60


async def test_a_key_over_its_rate_gets_429_with_retry_after(base_env, admin_token):
    """API_RATE_LIMIT is counted per key in PostgreSQL: over it, 429 with Retry-After."""
    async with api(base_env, API_RATE_LIMIT="5/minute") as client:
        acme = await new_company(client, admin_token, "Acme")
        answers = [await client.get("/v1/company", headers=bearer(acme["admin"])) for _ in range(6)]
    codes = [a.status_code for a in answers]
    # The company creation counted for the operator, not for the new key.
    assert codes[:5] == [200] * 5 and codes[5] == 429
    assert 1 <= int(answers[5].headers["retry-after"]) <= 60


async def test_revoked_keys_stop_working_and_secrets_never_come_back(base_env, admin_token, db_url):
    """A revoked key answers 401; channel account secrets are stored sealed and the API only
    names which are set."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        agent = await key(client, acme["admin"], "agent")
        keys = (await client.get("/v1/api-keys", headers=bearer(acme["admin"]))).json()
        agent_id = next(k["id"] for k in keys if k["role"] == "agent")
        assert (await client.get("/v1/leads", headers=bearer(agent))).status_code == 200
        revoked = await client.delete(f"/v1/api-keys/{agent_id}", headers=bearer(acme["admin"]))
        assert revoked.status_code == 204
        assert (await client.get("/v1/leads", headers=bearer(agent))).status_code == 401
        made = await client.post(
            "/v1/channel-accounts",
            json={
                "channel": "email",
                "name": "relay",
                "config": {"smtp_host": "smtp.example.org", "from_address": "hi@acme.example"},
                "secrets": {"smtp_password": "hunter2-but-longer"},
            },
            headers=bearer(acme["admin"]),
        )
        assert made.status_code == 201, made.text
        assert made.json()["secrets_set"] == ["smtp_password"]
        assert "hunter2" not in made.text
        unknown = await client.post(
            "/v1/channel-accounts",
            json={"channel": "email", "name": "x", "secrets": {"password": "p"}},
            headers=bearer(acme["admin"]),
        )
        assert unknown.status_code == 422
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchval("SELECT secrets::text FROM channel_accounts")
    finally:
        await conn.close()
    assert "hunter2" not in row and row.count("v1.kt1.") == 1


async def test_every_admin_change_is_on_the_audit_trail_once(base_env, admin_token, db_url):
    """An admin's change without an audit event of its own (a template, a stage, a webhook
    endpoint, a sequence) is recorded as `<METHOD> <route>` with its ids and no body; one that
    records its own (revoking a key) is recorded once; an agent's send, a refused change and a
    read are not admin changes."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        agent = await key(client, acme["admin"], "agent")
        template = await client.post(
            "/v1/templates",
            json={"name": "t1", "channel": "email", "subject": "S", "body": "secret body"},
            headers=h,
        )
        assert template.status_code == 201, template.text
        pipeline = (await client.get("/v1/pipelines", headers=h)).json()[0]
        stage = pipeline["stages"][1]["id"]
        renamed = await client.patch(f"/v1/stages/{stage}", json={"name": "Talking"}, headers=h)
        assert renamed.status_code == 200, renamed.text
        endpoint = await client.post(
            "/v1/webhooks/endpoints",
            json={"url": "https://hooks.example.org/shvya", "event_types": ["lead.created"]},
            headers=h,
        )
        assert endpoint.status_code == 201, endpoint.text
        sequence = await client.post(
            "/v1/sequences",
            json={"name": "S", "channel": "log", "steps": [{"kind": "send", "text": "Hi"}]},
            headers=h,
        )
        assert sequence.status_code == 201, sequence.text
        refused = await client.patch(f"/v1/stages/{stage}", json={"name": ""}, headers=h)
        assert refused.status_code == 422
        assert (await client.get("/v1/templates", headers=h)).status_code == 200
        assert (
            await client.post("/v1/templates", json={"name": "t2"}, headers=bearer(agent))
        ).status_code == 403
        keys = (await client.get("/v1/api-keys", headers=h)).json()
        agent_id = next(k["id"] for k in keys if k["role"] == "agent")
        assert (await client.delete(f"/v1/api-keys/{agent_id}", headers=h)).status_code == 204
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT payload FROM events WHERE type = 'audit.action' AND company_id = $1"
            " ORDER BY created_at, id",
            uuid.UUID(acme["id"]),
        )
    finally:
        await conn.close()
    rows = [{"payload": json.loads(r["payload"])} for r in rows]
    actions = [r["payload"]["action"] for r in rows]
    prefix = acme["admin"][: len("shvya_") + 8]
    generic = [r["payload"] for r in rows if " /v1/" in r["payload"]["action"]]
    assert len(generic) == 4 and all(p["actor"] == f"key:{prefix}" for p in generic), generic
    assert actions.count("POST /v1/templates") == 1
    assert actions.count("PATCH /v1/stages/{stage_id}") == 1
    assert actions.count("POST /v1/webhooks/endpoints") == 1
    assert actions.count("POST /v1/sequences") == 1
    assert actions.count("api_key.revoked") == 1
    assert not any(a.startswith("DELETE /v1/api-keys") for a in actions)
    assert actions.count("api_key.created") == 2  # the first admin key and the agent's
    stage_event = next(r for r in rows if r["payload"]["action"].startswith("PATCH"))
    assert stage_event["payload"]["target"] == {"params": {"stage_id": stage}}
    assert "secret body" not in str([r["payload"] for r in rows])


async def test_the_embedded_postgresql_refuses_a_login_without_its_password(pg_admin_url):
    """The embedded PostgreSQL authenticates with scram-sha-256: its URL carries a password,
    and the same login without it is refused."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_admin_url)
    assert parts.password
    bare = urlunsplit(parts._replace(netloc=f"postgres@{parts.hostname}:{parts.port}"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(bare)
