"""The email channel's pure parts: which SMTP refusals are hard bounces, how text becomes safe
HTML with tracked links, template subjects, and the settings it refuses to start with."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError
from shvya_dispatch.channels.email import (
    EmailChannel,
    EmailContext,
    fill_placeholders,
    is_hard_bounce,
    render_html,
)
from shvya_dispatch.settings import DispatchSettings


@pytest.mark.parametrize(
    ("code", "message", "hard"),
    [
        (550, "5.1.1 <a@b.c>: Recipient address rejected: User unknown", True),
        (550, "5.1.10 Recipient domain has null MX", True),
        (553, "5.1.3 Bad recipient address syntax", True),
        (550, "5.2.1 Mailbox disabled", True),
        (550, "Requested action not taken: mailbox unavailable", True),
        (550, "5.7.1 Relaying denied", False),
        (554, "5.7.1 Service unavailable; client host blocked", False),
        (552, "5.2.2 Mailbox full", False),
        (554, "Transaction failed", False),
        (450, "4.1.1 Recipient address verification in progress", False),
        (451, "4.7.1 Greylisted", False),
    ],
)
def test_hard_bounce_classification(code: int, message: str, hard: bool) -> None:
    """Only bad-mailbox refusals (5.1.x, 5.2.1, or bare 550/551/553) count as hard bounces."""
    assert is_hard_bounce(code, message) is hard


def test_html_escapes_markup_and_links_only_http_urls() -> None:
    """Markup in the text is shown, not rendered; http(s) URLs become links without their
    sentence punctuation, and other schemes stay plain text."""
    html = render_html(
        'Hi <img src=x onerror="alert(1)">\n(see https://a.example/x_(y)), '
        "https://b.example/p?q=1&r=2! ftp://c.example javascript:alert(1)",
        track=lambda url: f"https://t.example/c?u={url}",
    )
    assert "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert (
        '<a href="https://t.example/c?u=https://a.example/x_(y)">https://a.example/x_(y)</a>),'
        in html
    )
    assert (
        '<a href="https://t.example/c?u=https://b.example/p?q=1&amp;r=2">'
        "https://b.example/p?q=1&amp;r=2</a>!"
    ) in html
    assert html.count("<a ") == 2
    assert "<br>" in html


def test_html_keeps_paragraphs_pixel_and_untracked_unsubscribe() -> None:
    """Blank lines make paragraphs; the pixel and the unsubscribe link are added unwrapped."""
    html = render_html(
        "one\n\ntwo",
        track=lambda url: "https://tracked",
        pixel_url="https://p.example/t/o/T.gif",
        unsubscribe_url="https://p.example/u/U",
    )
    assert "<p>one</p>\n<p>two</p>" in html
    assert '<a href="https://p.example/u/U">Unsubscribe</a>' in html
    assert '<img src="https://p.example/t/o/T.gif" width="1" height="1"' in html


def test_placeholders_fill_from_template_params() -> None:
    """{{n}} takes the n-th template parameter; a missing one stays visible."""
    assert (
        fill_placeholders("Hi {{1}}, re {{ 2 }} {{3}}", ["Riya", "solar"])
        == "Hi Riya, re solar {{3}}"
    )


class _Store:
    def __init__(self, ctx: EmailContext) -> None:
        self.ctx = ctx

    async def email_context(
        self,
        company_id: uuid.UUID,
        template_id: uuid.UUID | None,
        reply_to_message_id: uuid.UUID | None = None,
        domain: str | None = None,
    ) -> EmailContext:
        return self.ctx

    async def suppress_address(self, company_id, lead_id, address, reason) -> None:
        raise AssertionError("not expected")


def _settings(**kw: object) -> DispatchSettings:
    base: dict[str, object] = {"smtp_host": "127.0.0.1", "smtp_from": "sales@acme.example"}
    return DispatchSettings(_env_file=None, **(base | kw))


def _params(**kw: object) -> SendParams:
    base: dict[str, object] = dict(
        company_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        channel="email",
        to="a@b.example",
        text="x",
        send_key="k",
    )
    return SendParams(**(base | kw))


def test_subject_never_carries_a_line_break() -> None:
    """A template subject with CR/LF is folded onto one line, so it cannot inject headers."""
    ctx = EmailContext("Acme", None, "Hi\r\nBcc: x@evil.example")
    channel = EmailChannel(_settings(), _Store(ctx))
    params = _params()
    subject = channel.subject_for(params, ctx)
    msg = channel.build_message(
        "a@b.example", "x", message_id=uuid.uuid4(), params=params, subject=subject
    )
    assert msg["Subject"] == "Hi Bcc: x@evil.example"
    assert "Bcc" not in msg.keys()


def test_company_subject_beats_the_default() -> None:
    """Without a template subject, the company's email_subject setting is used."""
    ctx = EmailContext("Acme", "News from Acme", None)
    channel = EmailChannel(_settings(), _Store(ctx))
    assert channel.subject_for(_params(), ctx) == "News from Acme"


def test_recipient_without_domain_is_permanent() -> None:
    """A malformed recipient address is a permanent failure."""
    channel = EmailChannel(_settings(), _Store(EmailContext()))
    with pytest.raises(PermanentError):
        channel.build_message("nobody", "x", message_id=uuid.uuid4(), params=_params(), subject="s")


def test_settings_refuse_smtp_host_without_sender() -> None:
    """SMTP_HOST without SMTP_FROM stops start-up with a message naming SMTP_FROM."""
    with pytest.raises(ValidationError, match="SMTP_FROM"):
        DispatchSettings(_env_file=None, smtp_host="smtp.example.com")


def test_settings_refuse_user_without_password() -> None:
    """SMTP_USER without SMTP_PASSWORD stops start-up."""
    with pytest.raises(ValidationError, match="SMTP_PASSWORD"):
        DispatchSettings(_env_file=None, smtp_host="h", smtp_from="a@b.example", smtp_user="u")


def test_default_ports_follow_security() -> None:
    """Unset SMTP_PORT means 587 for STARTTLS, 465 for implicit TLS and 25 for plain."""
    assert _settings(smtp_security="starttls").smtp_port_effective == 587
    assert _settings(smtp_security="tls").smtp_port_effective == 465
    assert _settings(smtp_security="none").smtp_port_effective == 25
    assert _settings(smtp_port=2525).smtp_port_effective == 2525
