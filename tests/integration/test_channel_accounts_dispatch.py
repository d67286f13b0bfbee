"""Per-company channel accounts in dispatch, through the real /v1 API, the real dispatch wiring
(`build_deps`), two fake Graph servers and real SMTP servers: each company's messages leave
through its own account, the platform's settings stay the fallback, and one company's pause,
pacing and caps never touch another's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

import asyncpg
import httpx
import pytest

from shvya_common.bus import JobContext
from shvya_common.contracts import MediaFetchParams
from shvya_common.db import create_pool
from shvya_common.errors import DeferJob, PermanentError
from shvya_dispatch.accounts import CompanyChannels
from shvya_dispatch.app import build_media_deps
from shvya_dispatch.media import handle_media_fetch
from shvya_dispatch.template_sync import AccountSyncTargets, sync_loop
from tests.fakes.graph_server import FakeGraph, GraphFault
from tests.integration.channel_accounts_support import (
    AUTH_WITHOUT_TLS,
    SECRETS_KEYS,
    Mailbox,
    Tenant,
    add_account,
    make_tenant,
    plaintext_hits,
    smtp_server,
)
from tests.integration.dispatch_support import (
    Dispatcher,
    dispatch_settings,
    make_lead,
    message_row,
    queue_send,
)
from tests.integration.webhook_support import ingest_client
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings(AUTH_WITHOUT_TLS)]

TOKEN_A = "EAAG-acme-token-5c0ffee"
TOKEN_A2 = "EAAG-acme-token-rotated-77"
TOKEN_B = "EAAG-globex-token-d00d"
APP_SECRET_A = "acme-app-secret-91c3"
SMTP_PASSWORD_A = "acme-smtp-password-4e2f"
PHONE_A, PHONE_B = "110000000000001", "220000000000002"
WABA_A, WABA_B = "310000000000001", "420000000000002"
SECRETS = [TOKEN_A, TOKEN_A2, TOKEN_B, APP_SECRET_A, SMTP_PASSWORD_A]


@dataclass
class World:
    """Three companies: Acme with its own number and SMTP server, Globex with its own number
    and the platform's relay under its own From, and Initech with no account at all."""

    pool: asyncpg.Pool
    api: Any
    acme: Tenant
    globex: Tenant
    initech: Tenant
    graph_a: FakeGraph
    graph_b: FakeGraph
    acme_smtp: Mailbox
    relay: Mailbox
    dispatcher: Dispatcher
    accounts: dict[str, dict[str, Any]]
    admin: str


@pytest.fixture
async def world(base_env: dict[str, str], db_url: str) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        graph_a = await stack.enter_async_context(
            FakeGraph(token=TOKEN_A, phone_number_id=PHONE_A, waba_id=WABA_A)
        )
        graph_b = await stack.enter_async_context(
            FakeGraph(token=TOKEN_B, phone_number_id=PHONE_B, waba_id=WABA_B)
        )
        # The platform's Graph, where ingest proves each company owns the number it registers;
        # the companies send through their own (each account's base_url).
        proofs = await stack.enter_async_context(
            FakeGraph(token=TOKEN_A, phone_number_id=PHONE_A, waba_id=WABA_A)
        )
        proofs.add_number(PHONE_B, TOKEN_B, WABA_B)
        acme_port, acme_smtp = stack.enter_context(smtp_server(("acme", SMTP_PASSWORD_A)))
        relay_port, relay = stack.enter_context(smtp_server())
        api = await stack.enter_async_context(
            ingest_client(
                base_env, SECRETS_KEYS=SECRETS_KEYS, WHATSAPP_CLOUD_BASE_URL=proofs.base_url
            )
        )
        admin = base_env["ADMIN_TOKEN"]
        acme = await make_tenant(api, admin, "Acme")
        globex = await make_tenant(api, admin, "Globex")
        initech = await make_tenant(api, admin, "Initech")
        accounts = {
            "acme_wa": await add_account(
                api,
                acme,
                "whatsapp_cloud",
                {"phone_number_id": PHONE_A, "waba_id": WABA_A, "base_url": graph_a.base_url},
                {"access_token": TOKEN_A, "app_secret": APP_SECRET_A},
            ),
            "acme_mail": await add_account(
                api,
                acme,
                "email",
                {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": acme_port,
                    "smtp_security": "none",
                    "smtp_user": "acme",
                    "from_address": "sales@acme.example",
                    "from_name": "Acme Sales",
                    "reply_to": "team@acme.example",
                },
                {"smtp_password": SMTP_PASSWORD_A},
            ),
            "globex_wa": await add_account(
                api,
                globex,
                "whatsapp_cloud",
                {"phone_number_id": PHONE_B, "waba_id": WABA_B, "base_url": graph_b.base_url},
                {"access_token": TOKEN_B},
            ),
            "globex_mail": await add_account(
                api, globex, "email", {"from_address": "hello@globex.example"}
            ),
            "globex_web": await add_account(api, globex, "whatsapp_web", {"account": "front desk"}),
        }
        pool = await create_pool(db_url, 1, 8)
        stack.push_async_callback(pool.close)
        settings = dispatch_settings(
            db_url,
            secrets_keys=SECRETS_KEYS,
            channel_accounts_allow_private_hosts=True,
            smtp_host="127.0.0.1",
            smtp_port=relay_port,
            smtp_security="none",
            smtp_from="platform@shvya.example",
            # Globex's domain may use the relay (its subdomains too); no other company's may.
            smtp_relay_domains="globex.example",
            policy_email_quiet_hours="",
            whatsapp_template_sync_seconds=3600,
            # Changed accounts are picked up this soon (the default is 30 s).
            channel_accounts_refresh_seconds=0.3,
        )
        dispatcher = await stack.enter_async_context(Dispatcher(pool, settings))
        yield World(
            pool,
            api,
            acme,
            globex,
            initech,
            graph_a,
            graph_b,
            acme_smtp,
            relay,
            dispatcher,
            accounts,
            admin,
        )


async def _lead(world: World, tenant: Tenant, phone: str = "+15551230001") -> uuid.UUID:
    return await make_lead(
        world.pool,
        tenant.id,
        phone=phone,
        email="riya@example.org",
        last_inbound_at=datetime.now(UTC),
    )


async def _send(world: World, tenant: Tenant, lead: uuid.UUID, **kwargs: Any) -> dict[str, Any]:
    message_id, params = await queue_send(world.pool, tenant.id, lead, **kwargs)
    result = await world.dispatcher.send(message_id, params)
    return {"result": result, "id": message_id, "row": await message_row(world.pool, message_id)}


async def test_each_company_sends_whatsapp_through_its_own_number_and_token(world):
    """Acme's reply is one POST to Acme's number with Acme's token, Globex's to Globex's, and
    each message records the account it left through; Initech, with none, falls back."""
    acme_lead, globex_lead = await _lead(world, world.acme), await _lead(world, world.globex)
    initech_lead = await _lead(world, world.initech)
    acme = await _send(world, world.acme, acme_lead, text="Hello from Acme")
    globex = await _send(world, world.globex, globex_lead, text="Hello from Globex")
    initech = await _send(world, world.initech, initech_lead, text="Hello from Initech")

    assert [(r.path, r.headers["Authorization"], r.body["text"]) for r in world.graph_a.sent] == [
        (f"/v23.0/{PHONE_A}/messages", f"Bearer {TOKEN_A}", {"body": "Hello from Acme"})
    ]
    assert [(r.path, r.headers["Authorization"], r.body["text"]) for r in world.graph_b.sent] == [
        (f"/v23.0/{PHONE_B}/messages", f"Bearer {TOKEN_B}", {"body": "Hello from Globex"})
    ]
    assert acme["row"]["status"] == globex["row"]["status"] == "sent"
    assert acme["row"]["provider_message_id"] == world.graph_a.sent[0].wamid
    assert acme["row"]["meta"]["channel_account"] == world.accounts["acme_wa"]["id"]
    assert globex["row"]["meta"]["channel_account"] == world.accounts["globex_wa"]["id"]
    # No platform WhatsApp is configured here, so the company without an account is logged.
    assert initech["row"]["status"] == "logged"
    assert "channel_account" not in initech["row"]["meta"]


async def test_each_company_mails_through_its_own_server_or_the_relay_with_its_own_from(world):
    """Acme's mail goes to Acme's SMTP server with Acme's login and From; Globex's through the
    platform's relay with Globex's From; Initech's through the relay with the platform's."""
    for tenant in (world.acme, world.globex, world.initech):
        lead = await _lead(world, tenant)
        sent = await _send(world, tenant, lead, channel="email", to="riya@example.org")
        assert sent["row"]["status"] == "sent", sent["row"]["last_error"]

    [acme] = world.acme_smtp.received
    assert acme["login"] == "acme" and acme["mail_from"] == "sales@acme.example"
    headers = message_from_bytes(acme["content"], policy=policy.default)
    assert headers["From"] == "Acme Sales <sales@acme.example>"
    assert headers["Reply-To"] == "team@acme.example"
    assert headers["Message-ID"].endswith("@acme.example>")
    assert [m["mail_from"] for m in world.relay.received] == [
        "hello@globex.example",
        "platform@shvya.example",
    ]
    assert all(m["login"] is None for m in world.relay.received)


async def test_the_relay_never_sends_from_a_domain_the_operator_did_not_allow(world):
    """A company on the platform's relay naming a From outside SMTP_FROM's domain and
    SMTP_RELAY_DOMAINS (here a bank's) is refused with the reason, and the relay sees nothing;
    a subdomain of an allowed domain is sent."""
    hooli = await make_tenant(world.api, world.admin, "Hooli")
    account = await add_account(world.api, hooli, "email", {"from_address": "ceo@bank.example"})
    lead = await _lead(world, hooli)
    with pytest.raises(PermanentError, match="sends only for SMTP_FROM's domain"):
        await _send(world, hooli, lead, channel="email", to="riya@example.org")
    assert world.relay.received == []
    moved = await world.api.patch(
        f"/v1/channel-accounts/{account['id']}",
        json={"config": {"from_address": "news@mail.globex.example"}},
        headers=hooli.auth,
    )
    assert moved.status_code == 200, moved.text
    world.dispatcher.deps.router.accounts.forget(hooli.id, "email")  # type: ignore[union-attr]
    sent = await _send(world, hooli, lead, channel="email", to="riya@example.org")
    assert sent["row"]["status"] == "sent", sent["row"]["last_error"]
    assert [m["mail_from"] for m in world.relay.received] == ["news@mail.globex.example"]


async def test_one_companys_pause_never_defers_anothers_and_a_new_token_ends_it(world):
    """Graph refusing Acme's token (190) pauses Acme's WhatsApp only: Globex's sends go on,
    Acme's wait without calling Graph, and once Acme stores a new token its sends flow again."""
    acme_lead, globex_lead = await _lead(world, world.acme), await _lead(world, world.globex)
    world.graph_a.script(GraphFault(190))
    with pytest.raises(DeferJob, match="paused"):
        await _send(world, world.acme, acme_lead, text="refused")
    globex = await _send(world, world.globex, globex_lead, text="still flowing")
    assert globex["row"]["status"] == "sent"
    calls = len(world.graph_a.requests)
    with pytest.raises(DeferJob, match="paused"):
        await _send(world, world.acme, acme_lead, to="+15551230009", text="waits")
    assert len(world.graph_a.requests) == calls  # deferred without asking Graph
    pauses = await world.pool.fetch("SELECT company_id, credential_fingerprint FROM channel_pauses")
    assert [p["company_id"] for p in pauses] == [world.acme.id]
    assert all(secret not in str(dict(pauses[0])) for secret in SECRETS)

    companies = world.dispatcher.deps.router.accounts  # type: ignore[union-attr]
    assert isinstance(companies, CompanyChannels)
    refused = await companies.fingerprint(world.acme.id, "whatsapp_cloud")
    world.graph_a.token = TOKEN_A2
    patched = await world.api.patch(
        f"/v1/channel-accounts/{world.accounts['acme_wa']['id']}",
        json={"secrets": {"access_token": TOKEN_A2}},
        headers=world.acme.auth,
    )
    assert patched.status_code == 200, patched.text
    await eventually(
        lambda: companies.fingerprint(world.acme.id, "whatsapp_cloud"), lambda f: f != refused
    )
    resumed = await _send(world, world.acme, acme_lead, to="+15551230010", text="back")
    assert resumed["row"]["status"] == "sent"
    assert world.graph_a.sent[-1].headers["Authorization"] == f"Bearer {TOKEN_A2}"


async def test_pacing_and_daily_caps_are_counted_per_company(world):
    """Two companies writing to the same number are paced apart, each on its own; WhatsApp Web
    pacing and caps count on each company's own profile."""
    acme_lead = await _lead(world, world.acme, phone="+15557770001")
    globex_lead = await _lead(world, world.globex, phone="+15557770001")
    await _send(world, world.acme, acme_lead, to="+15557770001")
    globex = await _send(world, world.globex, globex_lead, to="+15557770001")
    assert globex["row"]["status"] == "sent"  # Acme's gap to this number is Acme's alone
    with pytest.raises(DeferJob, match="pacing"):
        await _send(world, world.acme, acme_lead, to="+15557770001")

    # WhatsApp Web is not enabled here: sends are logged, under the channel's rules.
    await _send(world, world.globex, globex_lead, channel="whatsapp_web", to="+15557770001")
    acme_web = await _send(world, world.acme, acme_lead, channel="whatsapp_web", to="+15557770001")
    assert acme_web["row"]["status"] == "logged"
    keys = dict(
        await world.pool.fetch(
            "SELECT company_id, pacing_key FROM send_pacing WHERE channel = 'whatsapp_web'"
        )
    )
    assert keys == {
        world.globex.id: f"ca-{world.accounts['globex_web']['id']}",
        world.acme.id: "default",
    }


async def test_media_and_templates_use_each_companys_own_token(world):
    """media.fetch downloads with the token of the company that received the media, and the
    template sync reads each company's WhatsApp Business Account with its own token into that
    company only."""
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    media = world.graph_b.add_media(photo, "image/png")
    world.graph_a.add_template("offer", "en_US", [{"type": "BODY", "text": "Hi {{1}}"}])
    world.graph_b.add_template("welcome", "en_US", [{"type": "BODY", "text": "Welcome"}])
    globex_lead = await _lead(world, world.globex)
    message_id = await world.pool.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, meta)"
        " VALUES ($1, $2, 'inbound', 'whatsapp_cloud', '[Image attached]', '{\"media\": {}}')"
        " RETURNING id",
        world.globex.id,
        globex_lead,
    )
    row_id = await world.pool.fetchval(
        "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind,"
        " declared_mime_type) VALUES ($1, $2, 'whatsapp_cloud', $3, 'image', 'image/png')"
        " RETURNING id",
        world.globex.id,
        message_id,
        media.id,
    )
    params = MediaFetchParams(
        media_row_id=row_id, company_id=world.globex.id, message_id=message_id
    )
    settings = world.dispatcher.settings
    async with AsyncExitStack() as stack:
        deps = await build_media_deps(settings, world.pool, stack)
        job = JobContext(uuid.uuid4(), "media.fetch", 90, 1, world.globex.id, None)
        result = await handle_media_fetch(params, job, deps)
    assert result["status"] == "stored"
    assert {r.headers["Authorization"] for r in world.graph_b.requests} == {f"Bearer {TOKEN_B}"}
    assert not world.graph_a.requests

    stopping = asyncio.Event()
    async with httpx.AsyncClient() as client:
        targets = AccountSyncTargets(settings, world.pool, client, None)

        async def once() -> list[Any]:
            stopping.set()  # one pass: the loop checks `stopping` before sleeping again
            return await targets()

        await sync_loop(world.pool, once, 3600, stopping)
    names = {
        (r["company_id"], r["name"])
        for r in await world.pool.fetch("SELECT company_id, name FROM templates")
    }
    assert names == {(world.acme.id, "offer"), (world.globex.id, "welcome")}


async def test_secrets_never_appear_in_rows_answers_or_logs(world, capfd):
    """After sends on every channel, no table holds a token, app secret or SMTP password in plain
    text, the API answers name only which secrets are set, and no log line carries one."""
    for tenant in (world.acme, world.globex):
        lead = await _lead(world, tenant)
        await _send(world, tenant, lead)
        await _send(world, tenant, lead, channel="email", to="riya@example.org")
    listed = await world.api.get("/v1/channel-accounts", headers=world.acme.auth)
    assert listed.status_code == 200
    assert sorted(a["secrets_set"] for a in listed.json()) == [
        ["access_token", "app_secret"],
        ["smtp_password"],
    ]
    assert not [s for s in SECRETS if s in listed.text]
    assert await plaintext_hits(world.pool, SECRETS) == []
    sealed = await world.pool.fetchval(
        "SELECT secrets->>'access_token' FROM channel_accounts WHERE id = $1",
        uuid.UUID(world.accounts["acme_wa"]["id"]),
    )
    assert sealed.startswith("v1.k_new.")
    out, err = capfd.readouterr()
    assert not [s for s in SECRETS if s in out + err]


async def test_company_without_a_token_gets_a_reason_not_the_platform(world):
    """A company whose WhatsApp Cloud account has no token dead-letters with the reason; the
    platform's or another company's credentials are never used in its place."""
    hooli = await make_tenant(world.api, world.admin, "Hooli")
    await add_account(
        world.api,
        hooli,
        "whatsapp_cloud",
        {"phone_number_id": "330000000000003"},
        operator=world.admin,
    )
    lead = await _lead(world, hooli)
    with pytest.raises(PermanentError, match="no access_token"):
        await _send(world, hooli, lead)
    assert not world.graph_a.requests and not world.graph_b.requests
