"""The console's side of the API against real PostgreSQL and NATS: sessions (an HTTP-only
cookie accepted by /v1, CSRF for writes, viewers read-only, API keys unchanged), the inbox
routes, company-scoped operations and DLQ replay, the WhatsApp Web QR, and live notices that
reach only their own company."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from shvya_common.contracts import Topology
from shvya_common.contracts.events import EventType
from shvya_common.contracts.live import MAX_NOTICE_EVENTS, LiveNotice
from shvya_common.events import record_event
from shvya_common.whatsapp import web_accounts as web_db
from shvya_ingest.live import BUFFER, Listener, LiveHub, Resync
from shvya_scheduler.feed import feed_once
from tests.integration.test_tenants import api, inbound, new_company
from tests.keys import bearer

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def tiny_png() -> bytes:
    """A valid 2×2 PNG, made by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"\x00\x00\xff\x00\x00\xff\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


async def user(client: httpx.AsyncClient, admin: str, email: str, role: str = "admin") -> None:
    made = await client.post(
        "/v1/users",
        json={"email": email, "role": role, "password": PASSWORD},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text


async def sign_in(client: httpx.AsyncClient, email: str, **extra: Any) -> dict[str, str]:
    """Sign in; returns the headers a browser would send next (cookie and CSRF token)."""
    made = await client.post("/v1/session", json={"email": email, "password": PASSWORD, **extra})
    assert made.status_code == 201, made.text
    cookie = made.headers["set-cookie"]
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    return {"Cookie": f"shvya_session={token}", "X-CSRF-Token": made.json()["csrf_token"]}


def cookie_only(headers: dict[str, str]) -> dict[str, str]:
    return {"Cookie": headers["Cookie"]}


async def test_a_session_cookie_is_a_v1_credential_and_writes_need_the_csrf_token(
    base_env, admin_token
):
    """Signing in sets an HttpOnly, Secure, SameSite=Strict cookie; /v1 reads accept it alone,
    writes only with the session's X-CSRF-Token; after signing out it is refused."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        await user(client, acme["admin"], "boss@acme.example")
        made = await client.post(
            "/v1/session", json={"email": "Boss@Acme.example", "password": PASSWORD}
        )
        assert made.status_code == 201, made.text
        cookie = made.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        assert made.json()["user"]["role"] == "admin"
        assert made.json()["company"]["id"] == acme["id"]
        h = await sign_in(client, "boss@acme.example")
        assert (await client.get("/v1/leads", headers=cookie_only(h))).status_code == 200
        assert (await client.get("/v1/session", headers=cookie_only(h))).json()["csrf_token"] == h[
            "X-CSRF-Token"
        ]
        lead = {"contact_name": "Ana", "phone": "+4915112345678"}
        refused = await client.post("/v1/leads", json=lead, headers=cookie_only(h))
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        wrong = {**h, "X-CSRF-Token": "0" * 64}
        assert (await client.post("/v1/leads", json=lead, headers=wrong)).status_code == 403
        assert (await client.post("/v1/leads", json=lead, headers=h)).status_code == 201
        events = (await client.get("/v1/events?type=audit.action", headers=h)).json()["items"]
        assert any(e["payload"]["actor"] == "user:boss@acme.example" for e in events)
        assert (await client.delete("/v1/session", headers=cookie_only(h))).status_code == 403
        assert (await client.delete("/v1/session", headers=h)).status_code == 204
        assert (await client.get("/v1/leads", headers=cookie_only(h))).status_code == 401


async def test_wrong_passwords_and_unknown_emails_look_alike_and_attempts_are_limited(
    base_env, admin_token
):
    """A wrong password and an unknown email get the same 401; past SIGNIN_RATE_LIMIT per
    email the answer is 429 with Retry-After; a sign-in posted from another site is refused."""
    async with api(base_env, SIGNIN_RATE_LIMIT="3/minute") as client:
        acme = await new_company(client, admin_token, "Acme")
        await user(client, acme["admin"], "rep@acme.example", "agent")
        wrong = await client.post(
            "/v1/session", json={"email": "rep@acme.example", "password": "not it at all"}
        )
        unknown = await client.post(
            "/v1/session", json={"email": "nobody@acme.example", "password": "not it at all"}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        foreign = await client.post(
            "/v1/session",
            json={"email": "rep@acme.example", "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        for _ in range(2):
            await client.post("/v1/session", json={"email": "rep@acme.example", "password": "x"})
        limited = await client.post(
            "/v1/session", json={"email": "rep@acme.example", "password": PASSWORD}
        )
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0


async def test_viewers_read_what_agents_read_and_change_nothing(base_env, admin_token):
    """A viewer's session reads leads and conversations, is refused every write and the
    admin-only routes, and may still sign out."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        await user(client, acme["admin"], "look@acme.example", "viewer")
        h = await sign_in(client, "look@acme.example")
        assert (await client.get("/v1/leads", headers=h)).status_code == 200
        assert (await client.get("/v1/conversations", headers=h)).status_code == 200
        assert (await client.get("/v1/api-keys", headers=h)).status_code == 403
        made = await client.post("/v1/leads", json={"phone": "+4915112345678"}, headers=h)
        assert made.status_code == 403 and "read-only" in made.json()["detail"]
        assert (await client.delete("/v1/session", headers=h)).status_code == 204


async def test_an_api_key_wins_over_a_cookie_and_a_disabled_user_is_signed_out(
    base_env, admin_token
):
    """With both an Authorization header and a session cookie, the key decides (API keys work
    as before); disabling a user ends their sessions."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        await user(client, acme["admin"], "a@acme.example")
        await client.post(
            "/inbound-message", json=inbound("+15550001"), headers=bearer(beta["admin"])
        )
        h = await sign_in(client, "a@acme.example")
        mixed = await client.get("/v1/leads", headers={**h, **bearer(beta["admin"])})
        assert [lead["phone_e164"] for lead in mixed.json()["items"]] == ["+15550001"]
        assert (await client.get("/v1/leads", headers=h)).json()["items"] == []
        users = (await client.get("/v1/users", headers=bearer(acme["admin"]))).json()
        await client.patch(
            f"/v1/users/{users[0]['id']}", json={"disabled": True}, headers=bearer(acme["admin"])
        )
        assert (await client.get("/v1/leads", headers=h)).status_code == 401


async def test_the_inbox_orders_by_activity_counts_unread_and_flags_what_needs_a_person(
    base_env, admin_token
):
    """Conversations come newest activity first with unread counts; seen clears them; a
    taken-over conversation needs a human; outside WhatsApp's window the composer offers
    approved templates only."""
    async with api(base_env, EMBEDDINGS_PROVIDER="none") as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        await client.post("/inbound-message", json=inbound("+15550001", "first"), headers=h)
        await client.post("/inbound-message", json=inbound("+15550002", "second"), headers=h)
        await client.post("/inbound-message", json=inbound("+15550002", "again"), headers=h)
        items = (await client.get("/v1/conversations", headers=h)).json()["items"]
        assert [c["phone_e164"] for c in items] == ["+15550002", "+15550001"]
        assert [c["unread"] for c in items] == [2, 1]
        assert items[0]["last_message"]["preview"] == "again"
        second = items[0]["lead_id"]
        assert (await client.post(f"/v1/leads/{second}/seen", headers=h)).status_code == 200
        unread = (await client.get("/v1/conversations?view=unread", headers=h)).json()["items"]
        assert [c["phone_e164"] for c in unread] == ["+15550001"]
        await client.post(f"/v1/leads/{second}/handoff", headers=h)
        human = (await client.get("/v1/conversations?view=needs_human", headers=h)).json()
        assert [(c["lead_id"], c["needs_human_reason"]) for c in human["items"]] == [
            (second, "handoff")
        ]
        page = (await client.get("/v1/conversations?limit=1", headers=h)).json()
        rest = await client.get(
            f"/v1/conversations?limit=1&cursor={page['next_cursor']}", headers=h
        )
        assert rest.json()["items"][0]["phone_e164"] == "+15550001"
        for name, status in (("welcome", "approved"), ("draft", "pending")):
            await client.post(
                "/v1/templates",
                json={
                    "name": name,
                    "channel": "whatsapp_cloud",
                    "body": "Hi {{1}}",
                    "status": status,
                },
                headers=h,
            )
        lead = await client.post("/v1/leads", json={"phone": "+15550003"}, headers=h)
        composer = (await client.get(f"/v1/leads/{lead.json()['id']}/composer", headers=h)).json()
        assert composer["channel"] == "whatsapp_cloud" and composer["free_text"] is False
        assert [(t["name"], t["parameters"]) for t in composer["templates"]] == [("welcome", 1)]
        logged = (await client.get(f"/v1/leads/{second}/composer", headers=h)).json()
        assert logged["channel"] == "log" and logged["free_text"] is True


async def test_operations_show_and_replay_only_the_companys_dead_letters(
    base_env, admin_token, db_url
):
    """The DLQ list and the queue stats hold only the company's rows; a replay naming another
    company's dead letter skips it, and that one stays dead."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        conn = await asyncpg.connect(db_url)
        dead: dict[str, uuid.UUID] = {}
        try:
            for name, company in (("acme", acme), ("beta", beta)):
                dead[name] = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO jobs (id, task_name, task_params, priority, status, attempts,"
                    " company_id, last_error)"
                    " VALUES ($1, 'ai.summary', $2::jsonb, 90, 'dlq', 6, $3, 'boom')",
                    dead[name],
                    json.dumps({"lead_id": str(uuid.uuid4()), "reason": "api"}),
                    uuid.UUID(company["id"]),
                )
            h = bearer(acme["admin"])
            listed = (await client.get("/v1/operations/dlq", headers=h)).json()
            assert [d["id"] for d in listed["items"]] == [str(dead["acme"])]
            assert listed["items"][0]["error"] == "boom" and listed["total"] == 1
            queue = (await client.get("/v1/operations/queue", headers=h)).json()
            assert queue["tasks"] == [
                {
                    "task": "ai.summary",
                    "priority_level": 90,
                    "counts": {"dlq": 1},
                    "oldest_waiting_seconds": None,
                }
            ]
            assert queue["consumers"] is not None
            replayed = await client.post(
                "/v1/operations/dlq/replay",
                json={"ids": [str(dead["acme"]), str(dead["beta"])]},
                headers=h,
            )
            assert replayed.status_code == 200, replayed.text
            body = replayed.json()
            assert body["replayed"] == 1 and body["skipped"] == [str(dead["beta"])]
            statuses = dict(
                await conn.fetch(
                    "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[])", list(dead.values())
                )
            )
            assert statuses[dead["beta"]] == "dlq" and statuses[dead["acme"]] != "dlq"
            assert (await client.get("/v1/operations/pauses", headers=h)).json() == []
        finally:
            await conn.close()


async def test_a_whatsapp_web_qr_is_served_to_its_own_company_only(base_env, admin_token, plat):
    """A company's WhatsApp Web account (profile ca-<id>): a link is asked of the replica that
    holds it (409 when none does, 422 for a pairing code without a phone); the QR and pairing
    code that replica stores are served to that company's admin only; once linked no QR."""
    async with api(base_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        beta = await new_company(client, admin_token, "Beta")
        made = await client.post(
            "/v1/channel-accounts",
            json={"channel": "whatsapp_web", "name": "phone"},
            headers=bearer(acme["admin"]),
        )
        assert made.status_code == 201, made.text
        account = made.json()["id"]
        profile = f"ca-{account}"
        url = f"/v1/channel-accounts/{account}/whatsapp-web"
        state = (await client.get(url, headers=bearer(acme["admin"]))).json()
        assert state["status"] == "not_started" and state["qr"] is False
        assert state["account"] == profile and state["driven"] is False
        # No replica drives the account: a link request says how to link it instead.
        refused = await client.post(url + "/link", json={}, headers=bearer(acme["admin"]))
        assert refused.status_code == 409 and profile in refused.json()["detail"]
        # A replica holds it: the request is written for that replica to serve.
        assert await web_db.acquire_lease(plat.pool, profile, "dispatch:test", 60) is not None
        asked = await client.post(
            url + "/link",
            json={"method": "code", "phone": "+919812345678"},
            headers=bearer(acme["admin"]),
        )
        assert asked.status_code == 202, asked.text
        row = await web_db.read_account(plat.pool, profile)
        assert row is not None and row.login_requested and row.login_method == "code"
        assert row.login_phone == "+919812345678"
        bad = await client.post(
            url + "/link", json={"method": "code"}, headers=bearer(acme["admin"])
        )
        assert bad.status_code == 422
        await web_db.store_pairing_code(plat.pool, profile, "ABCD-EFGH")
        state = (await client.get(url, headers=bearer(acme["admin"]))).json()
        assert state["pairing_code"] == "ABCD-EFGH" and state["method"] == "code"
        await web_db.store_qr(plat.pool, profile, "2@auth-code", tiny_png())
        png = await client.get(url + "/qr.png", headers=bearer(acme["admin"]))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content == tiny_png()
        assert (await client.get(url + "/qr.png", headers=bearer(beta["admin"]))).status_code == 404
        assert (await client.get(url, headers=bearer(beta["admin"]))).status_code == 404
        await web_db.store_login_outcome(plat.pool, profile, "linked", "15550001111@c.us")
        state = (await client.get(url, headers=bearer(acme["admin"]))).json()
        assert state["status"] == "linked" and state["qr"] is False


async def test_the_feed_tells_each_company_about_its_own_events_only(plat, nats_url):
    """After a feed pass commits, one live notice per company names that company's events on
    its own subject; the hub hands a notice only to streams of that company."""
    topology: Topology = plat.topology
    acme = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('A') RETURNING id")
    beta = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('B') RETURNING id")
    nc = await nats.connect(nats_url)
    got: list[LiveNotice] = []
    try:
        sub = await nc.subscribe(topology.live_subjects)
        hub = LiveHub(nc, topology)
        await hub.start()
        with hub.listen(acme) as mine:
            for _ in range(MAX_NOTICE_EVENTS + 3):
                await record_event(plat.pool, acme, None, EventType.LEAD_CREATED, {})
            await record_event(plat.pool, beta, None, EventType.LEAD_CREATED, {})
            await nc.flush()
            while await feed_once(plat.bus, 500):
                pass
            for _ in range(2):
                msg = await sub.next_msg(timeout=5)
                got.append(LiveNotice.model_validate_json(msg.data))
            item = await asyncio.wait_for(mine.queue.get(), 5)
            assert isinstance(item, LiveNotice) and item.company_id == acme
            await asyncio.sleep(0.2)
            assert mine.queue.empty()
        await hub.close()
    finally:
        await nc.close()
    by_company = {n.company_id: n for n in got}
    assert len(by_company[acme].events) == MAX_NOTICE_EVENTS and by_company[acme].truncated
    assert len(by_company[beta].events) == 1 and not by_company[beta].truncated


def test_a_slow_stream_is_told_to_resync_instead_of_growing_without_bound():
    """A stream whose buffer is full drops what waits and gets one resync."""
    listener = Listener(uuid.uuid4())
    notice = LiveNotice(company_id=listener.company_id)
    for _ in range(BUFFER + 5):
        listener.offer(notice)
    assert listener.queue.qsize() <= BUFFER
    items = [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]
    assert any(isinstance(i, Resync) for i in items)


async def test_a_short_console_admin_password_creates_no_user(db_url):
    """A CONSOLE_ADMIN_PASSWORD under the console's minimum is refused with the reason, and no
    admin (nor anything else) is written with it."""
    from shvya_common.console_users import ensure_console_admin

    with pytest.raises(ValueError, match="shorter than 12 characters"):
        await ensure_console_admin(db_url, "admin@shvya.local", "hunter2", "Default company")
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
        assert await conn.fetchval("SELECT count(*) FROM companies WHERE is_default") == 0
    finally:
        await conn.close()


async def test_make_up_creates_the_default_companys_console_admin_once(db_url):
    """`shvya up` gives the default company an admin who can sign in with the generated
    password; a second start leaves that user (and a password changed since) alone."""
    from shvya_common.console_users import ensure_console_admin
    from shvya_common.passwords import check_password

    assert await ensure_console_admin(db_url, "Admin@Shvya.local", PASSWORD, "Default company")
    # The second start's (short) password is not used at all: the user exists.
    assert not await ensure_console_admin(db_url, "admin@shvya.local", "another", "Default")
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT u.email, u.role, u.password_hash, c.is_default FROM users u"
            " JOIN companies c ON c.id = u.company_id"
        )
    finally:
        await conn.close()
    assert (row["email"], row["role"], row["is_default"]) == ("admin@shvya.local", "admin", True)
    assert check_password(PASSWORD, row["password_hash"])
