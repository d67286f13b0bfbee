"""Ingest's pure pieces for the real channels: opt-out keywords, Meta payload reading, mail
parsing, proxy detection, webhook signatures and the link helpers' token contract."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from shvya_common import links
from shvya_common.settings import CommonSettings
from shvya_common.tokens import verify
from shvya_ingest.mail import clean_message_id, html_to_text, parse_mime
from shvya_ingest.meta_items import Recorded, Status, parse_notification
from shvya_ingest.optout import OptOutMatcher
from shvya_ingest.settings import DEFAULT_OPTOUT_KEYWORDS
from shvya_ingest.tracking import machine_agent
from shvya_ingest.webhooks import signature_matches
from tests import meta_samples as samples

MATCHER = OptOutMatcher(DEFAULT_OPTOUT_KEYWORDS)


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop! ",
        "UNSUBSCRIBE.",
        "Arrêter",
        "ARRETER",
        "stopp",
        "Baja",
        "dar  de baja",
        "PARAR",
        "रोकें",
        "रोकें।",
        "opt out",
    ],
)
def test_opt_out_keywords_match_whole_messages_in_several_languages(text):
    """A message that is exactly a keyword, whatever its case, spacing or end marks, opts out."""
    assert MATCHER.matches(text)


@pytest.mark.parametrize(
    "text",
    ["stop sending me prices", "don't stop", "STOP STOP", "stopping", "bajar", "s top", ""],
)
def test_sentences_and_near_misses_are_not_opt_outs(text):
    """Only exact matches count: a keyword inside a sentence is conversation."""
    assert not MATCHER.matches(text)


def test_keywords_are_configurable():
    """A custom keyword list replaces the defaults."""
    custom = OptOutMatcher(["HALT", "Schluss"])
    assert custom.matches("halt") and custom.matches("SCHLUSS")
    assert not custom.matches("stop")


def test_meta_statuses_keep_delivery_states_and_describe_errors():
    """Statuses parse from Meta's shape; failed ones carry a readable error; others are kept
    as recorded items, not delivery states."""
    payload = samples.statuses(
        [
            samples.failed("wamid.1", 131047, "Re-engagement message", ts=1750857384),
            samples.status("wamid.1", "deleted", 1750857385),
        ]
    )
    parsed = parse_notification(payload, datetime.now(UTC))
    reports = [i.report for i in parsed.of(Status)]
    assert len(reports) == 1
    assert reports[0].error_text == "131047: Re-engagement message (Re-engagement message)"
    assert int(reports[0].status_at.timestamp()) == 1750857384
    assert [i.kind for i in parsed.of(Recorded)] == ["status"]


def test_webhook_signature_is_hmac_sha256_of_the_raw_body():
    """The X-Hub-Signature-256 check accepts Meta's format and rejects any other body or key."""
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    good = "sha256=" + hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert signature_matches(b"secret", body, good)
    assert signature_matches(b"secret", body, good.upper().replace("SHA256=", "sha256="))
    assert not signature_matches(b"secret", body + b" ", good)
    assert not signature_matches(b"other", body, good)
    assert not signature_matches(b"secret", body, good.removeprefix("sha256="))


@pytest.mark.parametrize(
    ("agent", "ip", "expected"),
    [
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"
            " (via ggpht.com GoogleImageProxy)",
            "66.249.84.1",
            "google_image_proxy",
        ),
        ("Mozilla/5.0", "203.0.113.9", "apple_mail_privacy"),
        ("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15", "17.58.0.1", "apple_mail_privacy"),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", None, "barracuda"),
        ("Mimecast URL Protect", None, "mimecast"),
        ("Proofpoint URL Defense", None, "proofpoint"),
        ("Microsoft Office Existence Discovery", None, "microsoft_safelinks"),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            None,
            "yahoo_mail_proxy",
        ),
        ("", None, "no_user_agent"),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
            "198.51.100.7",
            None,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0"
            " Safari/537.36",
            "192.0.2.10",
            None,
        ),
    ],
)
def test_mail_proxies_and_scanners_are_machine_and_people_are_not(agent, ip, expected):
    """Known proxies and scanners are named; a person's browser or phone is not flagged."""
    assert machine_agent(agent, ip) == expected


def test_mime_parsing_prefers_plain_text_and_reduces_html():
    """A multipart mail yields its plain part; an HTML-only mail its visible text."""
    raw = (
        b"From: =?utf-8?q?Jos=C3=A9?= <jose@example.com>\r\nTo: sales@acme.test\r\n"
        b"Subject: Hola\r\nMessage-ID: <a1@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nPrecio?\r\n--b\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Precio?</p>\r\n--b--\r\n"
    )
    mail = parse_mime(raw, "bounce@example.com", ["sales@acme.test"])
    assert (mail.sender, mail.sender_name, mail.subject) == ("jose@example.com", "José", "Hola")
    assert mail.text.strip() == "Precio?" and mail.message_id == "a1@example.com"
    assert html_to_text("<style>p{}</style><p>One &amp; two</p><div>three</div>") == (
        "One & two\nthree"
    )
    assert clean_message_id("  <x@y>  ") == "x@y" and clean_message_id("<>") is None


def test_link_helpers_sign_the_agreed_payloads():
    """unsubscribe_url, open_pixel_url and click_url carry tokens ingest can verify and read."""
    settings = CommonSettings(link_secret="s" * 32, public_base_url="https://in.example.com/")
    company = "7b7f8d4e-0f6a-4b8e-9a51-2f1f0a0c1d2e"
    unsubscribe = links.unsubscribe_url(settings, company, " Ana@Example.COM ")
    assert unsubscribe.startswith("https://in.example.com/u/")
    assert verify("s" * 32, unsubscribe.rsplit("/", 1)[1]) == {
        "c": company,
        "a": "Ana@example.com",
        "ch": "email",
    }
    pixel = links.open_pixel_url(settings, "m-1")
    assert pixel.startswith("https://in.example.com/t/o/") and pixel.endswith(".gif")
    assert verify("s" * 32, pixel.rsplit("/", 1)[1][:-4]) == {"k": "o", "m": "m-1"}
    click = links.click_url(settings, "m-1", "https://acme.test/a?b=c")
    assert verify("s" * 32, click.rsplit("/", 1)[1]) == {
        "k": "c",
        "m": "m-1",
        "u": "https://acme.test/a?b=c",
    }
    with pytest.raises(ValueError, match="http"):
        links.click_url(settings, "m-1", "javascript:alert(1)")


def test_settings_refuse_an_smtp_receiver_in_every_http_worker():
    """SMTP_RECEIVER_ENABLED with HTTP_WORKERS>1 stops start-up instead of racing for the port."""
    from pydantic import ValidationError

    from shvya_ingest.settings import IngestSettings

    with pytest.raises(ValidationError, match="HTTP_WORKERS=1"):
        IngestSettings(admin_token="a" * 24, smtp_receiver_enabled=True, http_workers=2)
    ok = IngestSettings(admin_token="a" * 24, smtp_receiver_enabled=True, whatsapp_app_secret=" ")
    assert ok.whatsapp_app_secret is None
