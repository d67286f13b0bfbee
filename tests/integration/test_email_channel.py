"""The email channel against a real SMTP server (aiosmtpd on a free port) and a real database:
the message parsed back with the stdlib parser, STARTTLS, implicit TLS, login, and how SMTP
replies map onto retry, dead-letter and hard-bounce suppression."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shvya_common import tokens
from shvya_common.contracts import SendParams
from shvya_common.embedded import free_port
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.channels import ChannelRouter
from shvya_dispatch.channels.email import EmailChannel
from shvya_dispatch.repository import EmailRepository
from shvya_dispatch.settings import DispatchSettings

pytestmark = pytest.mark.integration

SECRET = "test-link-secret-0123456789-0123456789"
PUBLIC = "https://shvya.example.com"
SMTP_PASSWORD = "s3cret-smtp-password"


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives and answers as each test asks."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply is not None:
            return self.data_reply
        self.received.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": envelope.original_content or envelope.content,
                # session.ssl is set by STARTTLS; an SMTPS transport carries its own ssl_object.
                "tls": session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
                "authenticated": bool(session.authenticated),
                "ehlo": session.host_name,
            }
        )
        return "250 2.0.0 queued"


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"mailer", SMTP_PASSWORD.encode())
    # handled=False: aiosmtpd answers the 535 itself.
    return AuthResult(success=ok, handled=False)


@dataclass
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 and localhost, made here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("smtp-cert")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Cert(cert_path, key_path)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _serve(recorder: Recorder, **kwargs: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def plain_smtp(recorder: Recorder) -> Iterator[int]:
    yield from _serve(recorder)


@pytest.fixture
def starttls_smtp(recorder: Recorder, cert: Cert) -> Iterator[int]:
    yield from _serve(
        recorder,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=_authenticate,
        auth_required=True,
    )


@pytest.fixture
def implicit_tls_smtp(recorder: Recorder, cert: Cert) -> Iterator[int]:
    yield from _serve(recorder, ssl_context=cert.server_context())


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    yield p
    await p.close()


@pytest.fixture
async def lead(pool: asyncpg.Pool) -> SendParams:
    """A company with a subject template and one lead; the send request for that lead."""
    company_id = await pool.fetchval(
        "INSERT INTO companies (name) VALUES ('Acme Solar') RETURNING id"
    )
    lead_id = await pool.fetchval(
        "INSERT INTO leads (company_id, email, contact_name)"
        " VALUES ($1, 'Riya@Example.org', 'Riya')"
        " RETURNING id",
        company_id,
    )
    template_id = await pool.fetchval(
        "INSERT INTO templates (company_id, name, channel, subject, body)"
        " VALUES ($1, 'quote', 'email', 'Your quote, {{1}}', 'Hi {{1}}') RETURNING id",
        company_id,
    )
    return SendParams(
        company_id=company_id,
        lead_id=lead_id,
        channel="email",
        to="Riya@Example.org",
        text="",
        template_id=template_id,
        template_params=["Riya"],
        send_key="k1",
        purpose="marketing",
    )


def make_settings(port: int, **overrides: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_from": "sales@acme-solar.example",
        "smtp_from_name": "Acme Solar Sales",
        "smtp_timeout_seconds": 10,
        "public_base_url": PUBLIC,
        "link_secret": SECRET,
        "email_unsubscribe_mailto": "unsubscribe@acme-solar.example",
    }
    values.update(overrides)
    return DispatchSettings(_env_file=None, **values)


def channel(settings: DispatchSettings, pool: asyncpg.Pool) -> EmailChannel:
    return EmailChannel(settings, EmailRepository(pool))


def parse(received: dict[str, Any]) -> EmailMessage:
    # On the wire lines end in CRLF; the parser keeps them, so compare in LF form.
    msg = message_from_bytes(received["content"].replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def token_of(url: str, prefix: str, suffix: str = "") -> dict[str, Any]:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC
    assert parts.path.startswith(prefix) and parts.path.endswith(suffix), url
    token = parts.path[len(prefix) : len(parts.path) - len(suffix)]
    return tokens.verify(SECRET, token)


async def test_message_parsed_back_has_headers_parts_unsubscribe_pixel_and_tracked_links(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """A send through the router arrives with Message-ID, the template's subject, RFC 8058
    unsubscribe headers whose token verifies, the text part, and an HTML part where markup is
    escaped, http(s) links go through signed click links and an open pixel is present."""
    text = (
        "Hi Riya,\n\nSee <b>our plans</b> & <script>alert(1)</script> at "
        "https://acme.example/pricing?a=1&b=2.\nNot a link: javascript:alert(2)\n\nThanks"
    )
    message_id = uuid.uuid4()
    params = lead.model_copy(update={"text": text})
    router = ChannelRouter({"email": channel(make_settings(plain_smtp), pool)}, None, "fail")
    result = await router.send(
        params.to, text, "email", params.template_id, message_id=message_id, params=params
    )

    assert len(recorder.received) == 1
    got = recorder.received[0]
    assert got["mail_from"] == "sales@acme-solar.example"
    assert got["rcpt_tos"] == ["Riya@Example.org"]
    assert got["ehlo"] == "acme-solar.example"
    assert got["tls"] is False  # SMTP_SECURITY=none
    msg = parse(got)
    assert msg["Message-ID"] == f"<{result.provider_message_id}>"
    assert re.fullmatch(rf"<[^@>]*{message_id.hex}@acme-solar\.example>", msg["Message-ID"])
    assert msg["Subject"] == "Your quote, Riya"
    assert msg["From"].addresses[0].addr_spec == "sales@acme-solar.example"
    assert msg["From"].addresses[0].display_name == "Acme Solar Sales"
    assert msg["Date"].datetime is not None
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    targets = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert targets[1] == "mailto:unsubscribe@acme-solar.example?subject=unsubscribe"
    unsubscribe = token_of(targets[0], "/u/")
    assert unsubscribe == {"c": str(lead.company_id), "a": "Riya@example.org", "ch": "email"}

    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert plain is not None and html_part is not None
    plain_text = plain.get_content()
    assert plain_text.startswith(text + "\n")
    assert targets[0] in plain_text
    html = html_part.get_content()
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;our plans&lt;/b&gt; &amp;" in html
    assert "javascript:alert(2)" in html and 'href="javascript' not in html

    hrefs = re.findall(r'<a href="([^"]+)">([^<]*)</a>', html)
    tracked = [(href, label) for href, label in hrefs if "/t/c/" in href]
    assert len(tracked) == 1
    href, label = tracked[0]
    assert label == "https://acme.example/pricing?a=1&amp;b=2"
    click = token_of(href.replace("&amp;", "&"), "/t/c/")
    assert click == {"k": "c", "m": str(message_id), "u": "https://acme.example/pricing?a=1&b=2"}
    assert "https://acme.example/pricing?a=1&amp;b=2</a>." in html
    assert [h for h, _ in hrefs if "/u/" in h] == [targets[0]]

    pixels = re.findall(r'<img src="([^"]+)" width="1" height="1"', html)
    assert len(pixels) == 1
    assert token_of(pixels[0], "/t/o/", ".gif") == {"k": "o", "m": str(message_id)}


async def test_tracking_and_footer_can_be_switched_off_and_default_subject_names_company(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """With tracking and the footer off, links stay as written and no pixel is added; without a
    template the subject falls back to the default naming the company."""
    settings = make_settings(
        plain_smtp,
        email_open_tracking=False,
        email_click_tracking=False,
        email_unsubscribe_footer=False,
    )
    params = lead.model_copy(update={"template_id": None, "text": "See https://acme.example/x"})
    await channel(settings, pool).send(
        params.to, params.text, message_id=uuid.uuid4(), params=params
    )
    msg = parse(recorder.received[0])
    assert msg["Subject"] == "A message from Acme Solar"
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert '<a href="https://acme.example/x">https://acme.example/x</a>' in html
    assert "<img" not in html and "/u/" not in html
    assert msg.get_body(("plain",)).get_content() == "See https://acme.example/x\n"  # type: ignore[union-attr]
    assert "List-Unsubscribe" in msg


async def test_starttls_with_login_over_a_verified_self_signed_certificate(
    starttls_smtp: int, recorder: Recorder, cert: Cert, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """SMTP_SECURITY=starttls upgrades the session (verifying the server against SMTP_CA_FILE)
    and logs in with SMTP_USER / SMTP_PASSWORD before sending."""
    settings = make_settings(
        starttls_smtp,
        smtp_security="starttls",
        smtp_ca_file=cert.cert,
        smtp_user="mailer",
        smtp_password=SMTP_PASSWORD,
    )
    params = lead.model_copy(update={"text": "over TLS"})
    await channel(settings, pool).send(
        params.to, params.text, message_id=uuid.uuid4(), params=params
    )
    assert len(recorder.received) == 1
    assert recorder.received[0]["tls"] is True
    assert recorder.received[0]["authenticated"] is True


async def test_wrong_password_is_permanent_and_the_error_never_shows_it(
    starttls_smtp: int, recorder: Recorder, cert: Cert, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """A 535 login refusal dead-letters the send, and the error names no password."""
    settings = make_settings(
        starttls_smtp,
        smtp_security="starttls",
        smtp_ca_file=cert.cert,
        smtp_user="mailer",
        smtp_password="not-the-password",
    )
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(PermanentError, match="535") as info:
        await channel(settings, pool).send(params.to, "x", message_id=uuid.uuid4(), params=params)
    assert "not-the-password" not in repr(info.value)
    assert "not-the-password" not in str(info.value.__cause__)
    assert recorder.received == []


async def test_untrusted_certificate_is_refused(
    starttls_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """Without SMTP_CA_FILE the self-signed server certificate fails verification, so nothing
    is sent in the clear or to an unverified server (retried, as the server may be fixed)."""
    settings = make_settings(
        starttls_smtp, smtp_security="starttls", smtp_user="mailer", smtp_password=SMTP_PASSWORD
    )
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(RetryableError):
        await channel(settings, pool).send(params.to, "x", message_id=uuid.uuid4(), params=params)
    assert recorder.received == []


async def test_starttls_never_falls_back_to_plain_text(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """With SMTP_SECURITY=starttls, a server that offers no STARTTLS gets no message at all."""
    settings = make_settings(plain_smtp, smtp_security="starttls")
    params = lead.model_copy(update={"text": "secret plans"})
    with pytest.raises(RetryableError, match="STARTTLS"):
        await channel(settings, pool).send(params.to, "x", message_id=uuid.uuid4(), params=params)
    assert recorder.received == []


async def test_implicit_tls(
    implicit_tls_smtp: int, recorder: Recorder, cert: Cert, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """SMTP_SECURITY=tls speaks TLS from the first byte (SMTPS)."""
    settings = make_settings(implicit_tls_smtp, smtp_security="tls", smtp_ca_file=cert.cert)
    params = lead.model_copy(update={"text": "smtps"})
    await channel(settings, pool).send(
        params.to, params.text, message_id=uuid.uuid4(), params=params
    )
    assert len(recorder.received) == 1
    assert recorder.received[0]["tls"] is True


async def suppressions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT company_id, channel, address, scope, reason FROM suppressions")


async def test_4xx_on_rcpt_is_retryable_and_suppresses_nothing(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """A temporary refusal (451 greylisting) raises RetryableError and leaves no suppression."""
    recorder.rcpt_reply = "451 4.7.1 Greylisted, try again later"
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(RetryableError, match="451"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )
    assert await suppressions(pool) == []


async def test_4xx_on_data_is_retryable(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """A 452 after DATA (server out of storage) raises RetryableError."""
    recorder.data_reply = "452 4.3.1 Insufficient system storage"
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(RetryableError, match="452"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )


async def test_hard_bounce_on_rcpt_is_permanent_and_suppresses_the_address(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """550 5.1.1 on RCPT raises PermanentError and adds an 'all'-scope email suppression for
    the address (domain lower-cased), with a hard-bounce event for the lead."""
    recorder.rcpt_reply = "550 5.1.1 <Riya@Example.org>: Recipient address rejected: User unknown"
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(PermanentError, match="550"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )
    rows = await suppressions(pool)
    assert [(r["company_id"], r["channel"], r["address"], r["scope"]) for r in rows] == [
        (lead.company_id, "email", "Riya@example.org", "all")
    ]
    assert "5.1.1" in rows[0]["reason"]
    events = await pool.fetch(
        "SELECT payload FROM events WHERE lead_id = $1 AND type = 'email.hard_bounce'",
        lead.lead_id,
    )
    assert len(events) == 1


async def test_policy_refusal_on_rcpt_is_permanent_without_suppression(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """550 5.7.1 (relaying denied) is the sender's problem: dead-lettered, recipient kept."""
    recorder.rcpt_reply = "550 5.7.1 Relaying denied"
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(PermanentError, match=r"5\.7\.1"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )
    assert await suppressions(pool) == []


async def test_5xx_on_data_is_permanent(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """554 after DATA (content rejected) raises PermanentError."""
    recorder.data_reply = "554 5.6.0 Message content rejected"
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(PermanentError, match="554"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )


async def test_unreachable_server_is_retryable(pool: asyncpg.Pool, lead: SendParams) -> None:
    """A refused connection is a network failure: RetryableError."""
    params = lead.model_copy(update={"text": "x"})
    with pytest.raises(RetryableError, match="connection"):
        await channel(make_settings(free_port()), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )


async def test_malformed_recipient_is_permanent(
    plain_smtp: int, recorder: Recorder, pool: asyncpg.Pool, lead: SendParams
) -> None:
    """An address with no domain is dead-lettered before any SMTP traffic."""
    params = lead.model_copy(update={"text": "x", "to": "riya"})
    with pytest.raises(PermanentError, match="not an email address"):
        await channel(make_settings(plain_smtp), pool).send(
            params.to, "x", message_id=uuid.uuid4(), params=params
        )
    assert recorder.received == []
