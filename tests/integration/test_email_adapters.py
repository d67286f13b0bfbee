"""Inbound email adapters in ingest against real NATS and PostgreSQL: one request per provider
in its real format and with its real signature (SendGrid's ECDSA, Mailgun's HMAC, Postmark's
basic auth), a forged one refused, and the generic JSON webhook with RFC 5322 addresses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shvya_common.embedded import free_port
from tests.fakes.s3_server import Bucket
from tests.integration.mail_support import (
    EMAIL_AUTH,
    SendGridSigner,
    dumps,
    fixture,
    mail_ingest,
    mail_settings,
    mailgun_fields,
    postmark_auth,
    postmark_payload,
)
from tests.integration.webhook_support import database

pytestmark = pytest.mark.integration

BOUNDARY = "xYzZY"


def multipart(
    fields: dict[str, str], files: dict[str, tuple[str, str, bytes]] | None = None
) -> bytes:
    """A multipart/form-data body as SendGrid and Mailgun post it (boundary xYzZY)."""
    out = b""
    for name, value in fields.items():
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, ctype, data) in (files or {}).items():
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

SENDGRID_HEADERS = (
    "Received: by mx0047p1mdw1.sendgrid.net with SMTP id 6WCVv7KAWn Wed, 27 Jul 2016 20:53:06"
    " +0000 (UTC)\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=gmail.com; s=20230601;"
    " h=to:subject:message-id:date:from:mime-version; bh=abc=; b=def=\nMIME-Version: 1.0\n"
    "From: Ana Lead <ana@example.org>\nDate: Mon, 1 Jun 2026 10:40:00 +0000\n"
    "Message-ID: <CAsendgrid.1@mail.gmail.com>\nSubject: Panels for my roof\n"
    "To: sales@acme-solar.example\nContent-Type: multipart/alternative;"
    ' boundary="001a113df448cad2d00538c7"\n'
)


def sendgrid_fields() -> dict[str, str]:
    """The fields of SendGrid's default (parsed) Inbound Parse POST."""
    return {
        "headers": SENDGRID_HEADERS,
        "dkim": "{@gmail.com : pass}",
        "to": "sales@acme-solar.example",
        "html": "<div>How many panels for a 40 m² roof?</div>",
        "from": "Ana Lead <ana@example.org>",
        "text": "How many panels for a 40 m² roof?\n",
        "sender_ip": "209.85.223.182",
        "spam_report": "Spam detection software... (0.0 points)",
        "envelope": json.dumps({"to": ["sales@acme-solar.example"], "from": "ana@example.org"}),
        "attachments": "1",
        "subject": "Panels for my roof",
        "spam_score": "0.0",
        "attachment-info": json.dumps(
            {"attachment1": {"filename": "roof.pdf", "name": "roof.pdf", "type": "application/pdf"}}
        ),
        "charsets": json.dumps(
            {"to": "UTF-8", "html": "UTF-8", "subject": "UTF-8", "from": "UTF-8", "text": "UTF-8"}
        ),
        "SPF": "pass",
    }


async def messages(db_url: str) -> list[Any]:
    async with database(db_url) as conn:
        return await conn.fetch(
            "SELECT m.body, m.provider_message_id, m.meta, l.email, l.contact_name,"
            " (SELECT count(*) FROM jobs j WHERE j.id = m.job_id) AS jobs"
            " FROM messages m JOIN leads l ON l.id = m.lead_id ORDER BY m.created_at"
        )


async def test_sendgrid_inbound_parse_signed_is_filed_and_forged_is_refused(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """A SendGrid Inbound Parse POST (parsed fields, an attachment) signed with the policy's key
    is filed under the sender with its attachment stored; the same body with a signature from
    another key, or no signature, is refused and writes nothing."""
    signer, forger = SendGridSigner(), SendGridSigner()
    settings = mail_settings(base_env, tmp_path, sendgrid_inbound_public_key=signer.public_key)
    body = multipart(
        sendgrid_fields(), {"attachment1": ("roof.pdf", "application/pdf", b"%PDF-1.4 roof")}
    )
    async with mail_ingest(settings) as client:
        forged = await client.post(
            "/webhooks/email/sendgrid", content=body, headers={**FORM, **forger.headers(body)}
        )
        unsigned = await client.post("/webhooks/email/sendgrid", content=body, headers=FORM)
        assert (forged.status_code, unsigned.status_code) == (403, 401)
        assert await messages(db_url) == []
        good = await client.post(
            "/webhooks/email/sendgrid", content=body, headers={**FORM, **signer.headers(body)}
        )
        assert good.status_code == 200, good.text
        assert good.json()["kind"] == "filed" and good.json()["job_id"]
    [row] = await messages(db_url)
    assert row["email"] == "ana@example.org" and row["contact_name"] == "Ana Lead"
    assert row["body"] == "How many panels for a 40 m² roof?"
    assert row["provider_message_id"] == "CAsendgrid.1@mail.gmail.com"
    [attachment] = row["meta"]["attachments"]
    assert attachment["filename"] == "roof.pdf" and attachment["mime_type"] == "application/pdf"
    stored = tmp_path / "media" / attachment["key"]
    assert stored.read_bytes() == b"%PDF-1.4 roof"
    assert row["jobs"] == 1


async def test_sendgrid_raw_mime_mode_is_filed(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """With 'POST the raw, full MIME message' on, the `email` field is parsed as the mail."""
    signer = SendGridSigner()
    settings = mail_settings(base_env, tmp_path, sendgrid_inbound_public_key=signer.public_key)
    raw = fixture("human_reply.eml", MESSAGE_ID="unknown@elsewhere.example").decode()
    body = multipart(
        {
            "email": raw,
            "to": "sales@acme-solar.example",
            "from": "ana@example.org",
            "envelope": json.dumps({"to": ["sales@acme-solar.example"], "from": "ana@example.org"}),
        }
    )
    async with mail_ingest(settings) as client:
        response = await client.post(
            "/webhooks/email/sendgrid", content=body, headers={**FORM, **signer.headers(body)}
        )
        assert response.status_code == 200, response.text
    [row] = await messages(db_url)
    assert row["body"] == "Yes please, what does the Home plan cost?"
    assert row["contact_name"] == "Lead, Ana"
    assert row["meta"]["quoted_text_removed"] is True


async def test_mailgun_route_signed_is_filed_forged_and_replayed_are_refused(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """A Mailgun route forward with a valid HMAC signature is filed once; a signature made with
    another key is refused, and replaying the accepted token is refused."""
    settings = mail_settings(base_env, tmp_path)
    headers = [
        ["Received", "from mail-wr1-f41.google.com by mxa.mailgun.org with ESMTP"],
        ["From", "Ravi Kumar <ravi@example.in>"],
        ["To", "sales@acme-solar.example"],
        ["Subject", "Battery backup?"],
        ["Message-Id", "<CAmailgun.7@mail.gmail.com>"],
        ["Mime-Version", "1.0"],
    ]
    fields = {
        "recipient": "sales@acme-solar.example",
        "sender": "ravi@example.in",
        "from": "Ravi Kumar <ravi@example.in>",
        "subject": "Battery backup?",
        "body-plain": "Do your plans include a battery?\n\n-- \nRavi",
        "stripped-text": "Do your plans include a battery?",
        "stripped-signature": "Ravi",
        "body-html": "<p>Do your plans include a battery?</p>",
        "message-headers": json.dumps(headers),
        "attachment-count": "0",
    }
    token = "a" * 50
    async with mail_ingest(settings) as client:
        forged = await client.post(
            "/webhooks/email/mailgun",
            content=multipart({**fields, **mailgun_fields(token, "key-attacker")}),
            headers=FORM,
        )
        assert forged.status_code == 403
        signed = {**fields, **mailgun_fields(token)}
        good = await client.post("/webhooks/email/mailgun", content=multipart(signed), headers=FORM)
        assert good.status_code == 200, good.text
        replay = await client.post(
            "/webhooks/email/mailgun", content=multipart(signed), headers=FORM
        )
        assert replay.status_code == 403
    [row] = await messages(db_url)
    assert (row["email"], row["contact_name"]) == ("ravi@example.in", "Ravi Kumar")
    assert row["provider_message_id"] == "CAmailgun.7@mail.gmail.com"
    assert row["body"].startswith("Do your plans include a battery?")


async def test_postmark_inbound_with_basic_auth_is_filed_and_wrong_credentials_are_refused(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """Postmark's inbound JSON behind the basic auth of its webhook URL is filed (Message-ID
    from its Headers, the attachment stored); missing or wrong credentials get 401."""
    settings = mail_settings(base_env, tmp_path)
    body = dumps(postmark_payload())
    async with mail_ingest(settings) as client:
        none = await client.post("/webhooks/email/postmark", content=body)
        wrong = await client.post(
            "/webhooks/email/postmark",
            content=body,
            headers={"authorization": postmark_auth(password="guess")},
        )
        assert (none.status_code, wrong.status_code) == (401, 401)
        assert await messages(db_url) == []
        good = await client.post(
            "/webhooks/email/postmark", content=body, headers={"authorization": postmark_auth()}
        )
        assert good.status_code == 200, good.text
    [row] = await messages(db_url)
    assert row["provider_message_id"] == "CApostmark.1@mail.example.org"
    assert row["body"] == "Hi, can I get a quote for 6 panels?"
    assert row["meta"]["attachments"][0]["filename"] == "roof.jpg"


async def test_an_attachment_goes_to_s3_and_an_unreachable_store_keeps_the_mail_for_a_retry(
    base_env: dict[str, str], db_url: str, tmp_path: Path, s3_bucket: Bucket
) -> None:
    """With MEDIA_STORE=s3 and the store unreachable, Postmark's POST gets 503 and nothing is
    filed, so Postmark retries; once the store answers, the same POST is filed with its
    attachment in the bucket."""
    down = s3_bucket.settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    body = dumps(postmark_payload())
    auth = {"authorization": postmark_auth()}
    async with mail_ingest(mail_settings(base_env, tmp_path, **down)) as client:
        refused = await client.post("/webhooks/email/postmark", content=body, headers=auth)
    assert refused.status_code == 503, refused.text
    assert await messages(db_url) == []
    async with mail_ingest(mail_settings(base_env, tmp_path, **s3_bucket.settings())) as client:
        filed = await client.post("/webhooks/email/postmark", content=body, headers=auth)
    assert filed.status_code == 200, filed.text
    [row] = await messages(db_url)
    [attachment] = row["meta"]["attachments"]
    objects = await s3_bucket.server.objects(s3_bucket.name)
    assert objects == {attachment["key"]: b"\xff\xd8\xff fake jpeg"}
    assert not (tmp_path / "media").exists()


async def test_unconfigured_adapters_refuse_everything(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    """Without its secret an adapter answers 503 and files nothing."""
    settings = mail_settings(
        base_env,
        tmp_path,
        mailgun_webhook_signing_key=None,
        postmark_inbound_username=None,
        postmark_inbound_password=None,
    )
    async with mail_ingest(settings) as client:
        for path in ("sendgrid", "mailgun", "postmark"):
            response = await client.post(f"/webhooks/email/{path}", content=b"{}", headers=FORM)
            assert response.status_code == 503, path


async def test_json_webhook_accepts_rfc5322_addresses(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """The generic JSON webhook takes `"from": "Ana Lead <ana@example.org>"` and quoted names."""
    settings = mail_settings(base_env, tmp_path)
    async with mail_ingest(settings) as client:
        first = await client.post(
            "/webhooks/email",
            headers=EMAIL_AUTH,
            json={
                "from": "Ana Lead <ana@example.org>",
                "to": "Acme <sales@acme-solar.example>",
                "subject": "Hi",
                "text": "Hello",
                "message_id": "<j1@example.org>",
            },
        )
        second = await client.post(
            "/webhooks/email",
            headers=EMAIL_AUTH,
            json={
                "from": '"Rao, Asha" <asha@example.org>',
                "subject": "Hi",
                "text": "Hello",
                "message_id": "<j2@example.org>",
            },
        )
        assert first.status_code == second.status_code == 200, first.text
    rows = await messages(db_url)
    assert [(r["email"], r["contact_name"]) for r in rows] == [
        ("ana@example.org", "Ana Lead"),
        ("asha@example.org", "Rao, Asha"),
    ]
