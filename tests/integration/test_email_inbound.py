"""Email's inbound side in ingest, in-process against real NATS and PostgreSQL: the JSON webhook,
the built-in SMTP receiver fed by a real SMTP client, one-click unsubscribe, open and click
tracking with links built by `shvya_common.links`."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiosmtplib
import pytest

from shvya_common import links
from shvya_common.embedded import free_port
from shvya_common.tokens import sign
from tests.integration.channel_accounts_support import SECRETS_KEYS, add_account, make_tenant
from tests.integration.webhook_support import (
    EMAIL_AUTH,
    database,
    ingest_client,
    ingest_settings,
)

pytestmark = pytest.mark.integration

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0.0.0 Safari/537.36"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
EMAIL = {
    "from": "Priya.Shah@Example.COM",
    "from_name": "Priya Shah",
    "to": "sales@acme.test",
    "subject": "Pricing for 20 seats",
    "text": "Hi, what does the team plan cost?",
    "message_id": "<CAF=abc123@mail.example.com>",
}


@pytest.fixture
async def client(base_env):
    async with ingest_client(base_env) as c:
        yield c


def path_of(url: str) -> str:
    return urlsplit(url).path


async def _sent_email(conn) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """An outbound email the platform sent to Priya: (company, lead, message)."""
    company, lead = await conn.fetchrow("SELECT company_id, id FROM leads LIMIT 1")
    message = await conn.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, recipient)"
        " VALUES ($1, $2, 'outbound', 'email', 'Our team plan is $10/seat.', 'sent',"
        " 'Priya.Shah@example.com') RETURNING id",
        company,
        lead,
    )
    return company, lead, message


async def test_inbound_email_webhook_files_by_sender_once(client, db_url):
    """POST /webhooks/email files the mail under the sender's address, once per Message-ID."""
    first = await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    again = await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["status"] == "ok"
    assert first.json() == again.json()
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT m.channel, m.body, m.provider_message_id, m.meta, l.email, l.contact_name"
            " FROM messages m JOIN leads l ON l.id = m.lead_id"
        )
        jobs = await conn.fetch("SELECT id, task_name FROM jobs")
    assert row["channel"] == "email"
    assert row["body"] == "Hi, what does the team plan cost?"
    assert row["provider_message_id"] == "CAF=abc123@mail.example.com"
    assert row["meta"]["subject"] == "Pricing for 20 seats"
    assert (row["email"], row["contact_name"]) == ("Priya.Shah@example.com", "Priya Shah")
    assert [(str(j["id"]), j["task_name"]) for j in jobs] == [(first.json()["job_id"], "ai.engage")]


async def test_inbound_email_webhook_refuses_mail_without_a_sender_or_content(client, db_url):
    """A sender that is no address, or a mail with nothing in it, is a 422 and writes nothing."""
    no_sender = await client.post(
        "/webhooks/email", headers=EMAIL_AUTH, json={**EMAIL, "from": "not an address"}
    )
    empty = await client.post(
        "/webhooks/email",
        headers=EMAIL_AUTH,
        json={**EMAIL, "text": "", "subject": None, "html": None},
    )
    assert no_sender.status_code == empty.status_code == 422
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_email_webhook_never_accepts_mail_without_a_credential(base_env, db_url):
    """With EMAIL_WEBHOOK_TOKEN unset the webhook is closed (401 with the reason), and with it
    set a missing token is 401, a wrong one 403 and the right one 200."""
    async with ingest_client(base_env, EMAIL_WEBHOOK_TOKEN="") as closed:
        refused = await closed.post("/webhooks/email", json=EMAIL)
        assert refused.status_code == 401
        assert "EMAIL_WEBHOOK_TOKEN is unset" in refused.json()["detail"]
        forged = await closed.post(
            "/webhooks/email", json=EMAIL, headers={"Authorization": "Bearer anything"}
        )
        assert forged.status_code == 403
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    token = "inbound-mail-token-1234567890"
    async with ingest_client(base_env, EMAIL_WEBHOOK_TOKEN=token) as client:
        assert (await client.post("/webhooks/email", json=EMAIL)).status_code == 401
        wrong = await client.post(
            "/webhooks/email", json=EMAIL, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 403
        right = await client.post(
            "/webhooks/email", json=EMAIL, headers={"Authorization": f"Bearer {token}"}
        )
        assert right.status_code == 200, right.text


async def test_unsubscribe_post_suppresses_and_answers_200_without_redirect(
    client, base_env, db_url
):
    """RFC 8058 one-click: POST /u/{token} adds an email suppression and answers a plain 200."""
    await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    async with database(db_url) as conn:
        company = await conn.fetchval("SELECT company_id FROM leads")
    url = links.unsubscribe_url(ingest_settings(base_env), company, "Priya.Shah@EXAMPLE.com")
    assert url.startswith("https://ingest.example.com/u/")
    for _ in range(2):
        response = await client.post(
            path_of(url),
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200
        assert "location" not in response.headers
    async with database(db_url) as conn:
        rows = await conn.fetch("SELECT company_id, channel, address, scope FROM suppressions")
        events = await conn.fetch(
            "SELECT lead_id, payload FROM events WHERE type = 'lead.unsubscribed'"
        )
    assert [tuple(r) for r in rows] == [(company, "email", "Priya.Shah@example.com", "all")]
    assert len(events) == 1 and events[0]["payload"]["one_click"] is True
    assert events[0]["lead_id"] is not None


async def test_unsubscribe_get_shows_a_form_and_never_suppresses(client, base_env, db_url):
    """GET /u/{token} (what link scanners do) shows a page with a POST button, changes nothing."""
    await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    async with database(db_url) as conn:
        company = await conn.fetchval("SELECT company_id FROM leads")
    url = links.unsubscribe_url(ingest_settings(base_env), company, "Priya.Shah@example.com")
    page = await client.get(path_of(url))
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert '<form method=post action="' + path_of(url) + '"' in page.text
    assert "Priya.Shah@example.com" not in page.text  # the address is masked
    forged = sign("some-other-secret", {"c": str(company), "a": "x@example.com", "ch": "email"})
    assert (await client.get(f"/u/{forged}")).status_code == 404
    assert (await client.post(f"/u/{forged}")).status_code == 404
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_open_pixel_counts_people_and_flags_mail_proxies(client, base_env, db_url):
    """The pixel is a GIF for everyone; Gmail's proxy and Apple's privacy fetch are machine."""
    await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    async with database(db_url) as conn:
        _, lead, message = await _sent_email(conn)
    url = links.open_pixel_url(ingest_settings(base_env), message)
    assert url.endswith(".gif")
    for agent in (CHROME, GMAIL_PROXY, "Mozilla/5.0"):
        response = await client.get(path_of(url), headers={"user-agent": agent})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content.startswith(b"GIF89a") and len(response.content) == 43
    bogus = await client.get("/t/o/bogus.token.gif", headers={"user-agent": CHROME})
    assert bogus.status_code == 200 and bogus.headers["content-type"] == "image/gif"
    async with database(db_url) as conn:
        events = await conn.fetch(
            "SELECT lead_id, payload FROM events WHERE type = 'email.opened' ORDER BY created_at"
        )
    assert [(e["payload"]["machine"], e["payload"]["agent"]) for e in events] == [
        (False, None),
        (True, "google_image_proxy"),
        (True, "apple_mail_privacy"),
    ]
    assert {e["lead_id"] for e in events} == {lead}
    assert {e["payload"]["message_id"] for e in events} == {str(message)}


async def test_click_redirects_only_to_the_signed_url(client, base_env, db_url):
    """A click goes (302) to the URL signed into the token; a tampered token goes nowhere."""
    await client.post("/webhooks/email", headers=EMAIL_AUTH, json=EMAIL)
    async with database(db_url) as conn:
        _, _, message = await _sent_email(conn)
    settings = ingest_settings(base_env)
    target = "https://acme.test/pricing?plan=team&utm_source=email"
    url = links.click_url(settings, message, target)
    response = await client.get(path_of(url), headers={"user-agent": CHROME})
    assert response.status_code == 302
    assert response.headers["location"] == target
    # Same signature, payload swapped for an attacker's URL.
    body, sig = path_of(url).rsplit("/", 1)[1].split(".")
    evil = sign("attacker-secret", {"k": "c", "m": str(message), "u": "https://evil.test/"})
    tampered = f"/t/c/{evil.split('.')[0]}.{sig}"
    unsigned = f"/t/c/{sign('attacker-secret', {'k': 'c', 'm': str(message), 'u': target})}"
    pixel_token = path_of(links.open_pixel_url(settings, message)).removeprefix("/t/o/")[:-4]
    for path in (tampered, unsigned, f"/t/c/{pixel_token}", "/t/c/garbage"):
        refused = await client.get(path)
        assert refused.status_code in (400, 404), path
        assert "location" not in refused.headers
    async with database(db_url) as conn:
        clicks = await conn.fetch("SELECT payload FROM events WHERE type = 'email.clicked'")
    assert [(c["payload"]["url"], c["payload"]["machine"]) for c in clicks] == [(target, False)]
    assert body  # the token's payload part was really replaced above


async def test_smtp_receiver_files_a_real_smtp_message_once(base_env, db_url):
    """The built-in aiosmtpd receiver files a mail sent over SMTP, and a resend is a duplicate."""
    port = free_port()
    overrides = {"SMTP_RECEIVER_ENABLED": "true", "SMTP_RECEIVER_PORT": str(port)}
    mail = EmailMessage()
    mail["From"] = "Rahul Verma <rahul@example.org>"
    mail["To"] = "sales@acme.test"
    mail["Subject"] = "Demo next week?"
    mail["Message-ID"] = "<20260601.42@example.org>"
    mail.set_content("Can we do a demo on Tuesday?\n\n-- \nRahul")
    mail.add_alternative("<p>Can we do a demo on <b>Tuesday</b>?</p>", subtype="html")
    html_only = EmailMessage()
    html_only["From"] = "ops@example.net"
    html_only["To"] = "sales@acme.test"
    html_only["Subject"] = "Invoice"
    html_only.set_content(
        "<html><body><p>Please send the invoice &amp; PO.</p></body></html>", subtype="html"
    )
    async with ingest_client(base_env, **overrides):
        for message in (mail, mail, html_only):
            await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=10)
        async with database(db_url) as conn:
            rows = await conn.fetch(
                "SELECT m.channel, m.body, m.provider_message_id, m.meta->>'subject' AS subject,"
                " l.email, l.contact_name FROM messages m JOIN leads l ON l.id = m.lead_id"
                " ORDER BY l.email"
            )
            jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'")
    assert [(r["email"], r["contact_name"], r["subject"]) for r in rows] == [
        ("ops@example.net", None, "Invoice"),
        ("rahul@example.org", "Rahul Verma", "Demo next week?"),
    ]
    assert rows[0]["body"] == "Please send the invoice & PO."
    assert rows[0]["provider_message_id"].startswith("sha256:")
    assert rows[1]["body"].startswith("Can we do a demo on Tuesday?")
    assert rows[1]["provider_message_id"] == "20260601.42@example.org"
    assert {r["channel"] for r in rows} == {"email"}
    assert jobs == 2


async def test_an_smtp_receiver_open_to_the_network_takes_only_addresses_it_serves(
    base_env, db_url
):
    """Bound beyond loopback, the receiver takes a recipient only at a domain of
    SMTP_RECEIVER_DOMAINS (the default company) or a company's registered inbound_address (that
    company, attached by the operator: the company itself may not claim one); any other address
    gets 550 at RCPT and nothing is filed."""
    port = free_port()
    overrides = {
        "SMTP_RECEIVER_ENABLED": "true",
        "SMTP_RECEIVER_HOST": "0.0.0.0",
        "SMTP_RECEIVER_PORT": str(port),
        "SMTP_RECEIVER_DOMAINS": "acme.test",
        "SECRETS_KEYS": SECRETS_KEYS,
    }

    def mail(to: str, subject: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = "Rahul Verma <rahul@example.org>"
        message["To"] = to
        message["Subject"] = subject
        message.set_content(f"About {subject}")
        return message

    async with ingest_client(base_env, **overrides) as api:
        globex = await make_tenant(api, base_env["ADMIN_TOKEN"], "Globex")
        mailbox = {"from_address": "hello@globex.test", "inbound_address": "Hello@Globex.test"}
        # Only the operator attaches an inbound address: the company cannot prove it is its own.
        claimed = await api.post(
            "/v1/channel-accounts",
            json={"channel": "email", "name": "main", "config": mailbox},
            headers=globex.auth,
        )
        assert claimed.status_code == 422 and "platform operator" in claimed.text
        await add_account(api, globex, "email", mailbox, operator=base_env["ADMIN_TOKEN"])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await aiosmtplib.send(
                mail("anyone@elsewhere.test", "spam"), hostname="127.0.0.1", port=port
            )
        assert refused.value.recipients[0].code == 550
        for to, subject in (("sales@acme.test", "acme"), ("hello@globex.test", "globex")):
            await aiosmtplib.send(mail(to, subject), hostname="127.0.0.1", port=port, timeout=10)
        async with database(db_url) as conn:
            rows = await conn.fetch(
                "SELECT m.meta->>'subject' AS subject, c.name, c.is_default FROM messages m"
                " JOIN companies c ON c.id = m.company_id ORDER BY 1"
            )
    assert [(r["subject"], r["name"] if not r["is_default"] else "default") for r in rows] == [
        ("acme", "default"),
        ("globex", "Globex"),
    ]


async def test_one_sender_writing_too_fast_gets_429_at_the_email_webhook(base_env, db_url):
    """INBOUND_RATE_LIMIT applies per sender at the email webhook as at /inbound-message: past
    it the sender's mail is answered 429 with Retry-After (the provider retries later, nothing
    is filed), while another sender is still filed."""
    async with ingest_client(base_env, INBOUND_RATE_LIMIT="2/minute") as client:
        answers = []
        for n in range(3):
            mail = {**EMAIL, "message_id": f"<burst-{n}@mail.example.com>"}
            answers.append(await client.post("/webhooks/email", json=mail, headers=EMAIL_AUTH))
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert int(answers[2].headers["Retry-After"]) > 0
        other = {**EMAIL, "from": "bo@example.org", "message_id": "<other@mail.example.com>"}
        assert (
            await client.post("/webhooks/email", json=other, headers=EMAIL_AUTH)
        ).status_code == 200
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == 3


async def test_inbound_message_takes_an_email_address_in_its_named_form(client, db_url):
    """`/inbound-message` on the email channel takes `Name <addr>` as the mail doors do: the
    lead is filed under the address."""
    filed = await client.post(
        "/inbound-message",
        json={
            "phone_number": "Ana Lead <Ana@Example.org>",
            "message_text": "Do you ship to Porto?",
            "channel": "email",
        },
    )
    assert filed.status_code == 200, filed.text
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT email FROM leads") == "Ana@example.org"
