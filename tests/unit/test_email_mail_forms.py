"""Email's pure pieces: RFC 5322 addresses, reply subjects and References, raw header folding,
our Message-IDs, auto-reply recognition, the new part of a reply, and bounces in the forms of the
RFCs and of big providers (fixtures in tests/fixtures/email)."""

from __future__ import annotations

import uuid
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from shvya_common.emailfacts import our_message_uuid, outbound_message_id
from shvya_dispatch.channels.mailheaders import (
    HeaderTooLong,
    fold_raw,
    reply_subject,
    thread_references,
)
from shvya_ingest.autoreply import auto_reply_reason
from shvya_ingest.bounces import parse_bounce
from shvya_ingest.mail import parse_addresses, parse_mime
from shvya_ingest.replies import new_part

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
OURS = "shvya.0f1e2d3c4b5a69788796a5b4c3d2e1f0@acme-solar.example"


def fixture(name: str, message_id: str = OURS) -> bytes:
    raw = (FIXTURES / name).read_bytes().replace(b"{MESSAGE_ID}", message_id.encode())
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Ana Lead <ana@example.org>", [("ana@example.org", "Ana Lead")]),
        ('"Lead, Ana" <ana@example.org>', [("ana@example.org", "Lead, Ana")]),
        ("=?utf-8?q?Ana_L=C3=A9ad?= <ana@example.org>", [("ana@example.org", "Ana Léad")]),
        ("ana@example.org", [("ana@example.org", None)]),
        ("Sales <s@acme.test>, b@acme.test", [("s@acme.test", "Sales"), ("b@acme.test", None)]),
        ("not an address", []),
    ],
)
def test_addresses_are_read_in_every_rfc5322_form(value: str, expected: list[object]) -> None:
    """Name <addr>, quoted names with commas, encoded-word names and lists all parse."""
    assert parse_addresses(value) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Pricing question", "Re: Pricing question"),
        ("Re: Pricing question", "Re: Pricing question"),
        ("RE: Re: AW: Pricing question", "Re: Pricing question"),
        ("Re[2]: SV: Pricing", "Re: Pricing"),
        ("Re:", None),
        (None, None),
    ],
)
def test_reply_subject_never_piles_up_prefixes(subject: str | None, expected: str | None) -> None:
    """A reply's subject is one 'Re: ' before the subject without its reply prefixes."""
    assert reply_subject(subject) == expected


def test_references_follow_rfc5322_and_keep_the_root_when_trimmed() -> None:
    """References is the parent's References plus its Message-ID; a long chain keeps the root."""
    assert thread_references("<c@x>", ["<a@x>", "<b@x>"], None) == ["<a@x>", "<b@x>", "<c@x>"]
    assert thread_references("<c@x>", [], "<b@x>") == ["<b@x>", "<c@x>"]
    long = [f"<{i}@x>" for i in range(40)]
    chain = thread_references("<z@x>", long, None)
    assert len(chain) == 20 and chain[0] == "<0@x>" and chain[-1] == "<z@x>"


def test_raw_folding_breaks_only_at_whitespace_and_refuses_overlong_tokens() -> None:
    """Folding inserts CRLF before existing spaces, never inside a token, and unfolds back."""
    value = "<https://x.example/" + "a" * 120 + ">, <mailto:u@x.example?subject=unsubscribe>"
    folded = fold_raw("List-Unsubscribe", value)
    assert folded.endswith("\r\n") and "=?" not in folded
    assert folded.replace("\r\n ", " ").rstrip("\r\n") == f"List-Unsubscribe: {value}"
    with pytest.raises(HeaderTooLong):
        fold_raw("X-Long", "a" * 1000)


def test_our_message_ids_carry_the_outbound_message() -> None:
    """Dispatch's Message-ID names its message; other senders' ids name none."""
    message_id = uuid.uuid4()
    value = outbound_message_id(message_id, "acme.example")
    assert our_message_uuid(value) == message_id
    assert our_message_uuid(value.strip("<>")) == message_id
    assert our_message_uuid("<CAF123@mail.gmail.com>") is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("auto_gmail_vacation.eml", "auto-submitted: auto-replied"),
        ("auto_exchange_oof.eml", "auto-submitted: auto-generated"),
        ("auto_ooo_subject_de.eml", "out-of-office subject"),
        ("auto_mailing_list.eml", "mailing list"),
        ("human_reply.eml", None),
    ],
)
def test_auto_replies_are_recognised_and_people_are_not(name: str, reason: str | None) -> None:
    """Gmail's vacation responder, Exchange's OOF, a German out-of-office subject and a list
    mail are automatic; a person's reply is not."""
    email = parse_mime(fixture(name))
    assert auto_reply_reason(email.headers, subject=email.subject, sender=email.sender) == reason


@pytest.mark.parametrize(
    ("headers", "sender", "reason"),
    [
        ([("X-Autorespond", "yes")], "a@x.example", "header x-autorespond"),
        ([("Precedence", "junk")], "a@x.example", "precedence: junk"),
        ([("Return-Path", "<>")], "a@x.example", "null return path"),
        ([], "noreply@x.example", "robot sender noreply"),
        ([("Auto-Submitted", "no")], "a@x.example", None),
    ],
)
def test_other_automatic_markers(
    headers: list[tuple[str, str]], sender: str, reason: str | None
) -> None:
    """X-Autorespond, Precedence: junk, a null return path and noreply senders are automatic;
    Auto-Submitted: no is a person."""
    assert auto_reply_reason(headers, subject="Hello", sender=sender) == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Tuesday works.\n\nAna\n\nOn Mon, Jun 1, 2026 at 10:16 AM Acme <s@a.example> wrote:\n"
            "> Hello Ana\n> Best",
            "Tuesday works.\n\nAna",
        ),
        (
            "Sounds good\n________________________________\nFrom: Acme <s@a.example>\n"
            "Sent: Monday, June 1, 2026 10:15\nTo: Ana\nSubject: Re: Pricing\n\nOld text",
            "Sounds good",
        ),
        (
            "Ja gerne!\n\nAm Mo., 1. Juni 2026 um 10:15 Uhr schrieb Acme <s@a.example>:\n> alt",
            "Ja gerne!",
        ),
        ("No quote at all.\n\nSecond paragraph.", "No quote at all.\n\nSecond paragraph."),
    ],
)
def test_the_new_part_of_a_reply_drops_quoted_history(text: str, expected: str) -> None:
    """Gmail, Outlook and German attribution lines and what they quote are removed."""
    assert new_part(text)[0] == expected


@pytest.mark.parametrize(
    ("name", "address", "kind", "status"),
    [
        ("dsn_postfix_hard.eml", "ghost@example.org", "hard", "5.1.1"),
        ("dsn_gmail_hard.eml", "nobody.here@gmail.com", "hard", "5.1.1"),
        ("dsn_office365_hard.eml", "left.company@contoso.com", "hard", "5.1.10"),
        ("bounce_yahoo_hard.eml", "not.a.user@yahoo.com", "hard", None),
        ("bounce_exim_hard.eml", "no-such-person@example.net", "hard", None),
        ("dsn_mailbox_full_soft.eml", "full.box@example.com", "soft", "5.2.2"),
        ("dsn_delayed_soft.eml", "slow.server@example.com", "soft", "4.4.7"),
        ("dsn_policy_soft.eml", "strict.policy@example.com", "soft", "5.7.1"),
    ],
)
def test_bounces_in_rfc_and_provider_forms(
    name: str, address: str, kind: str, status: str | None
) -> None:
    """RFC 3464 reports (Postfix, Gmail, Office 365) and non-standard bounces (Yahoo, Exim) name
    the failed recipient and how hard it failed, and the Message-ID of the mail that bounced
    where the bounce returns it."""
    message = message_from_bytes(fixture(name), policy=policy.default)
    sender = parse_mime(fixture(name)).sender
    bounce = parse_bounce(message, sender=sender, envelope_from=None)
    assert bounce is not None
    [recipient] = bounce.recipients
    assert (recipient.address.lower(), recipient.kind) == (address, kind)
    if status is not None:
        assert recipient.status == status
    if name != "dsn_policy_soft.eml":
        assert bounce.original_message_id == OURS


@pytest.mark.parametrize(
    "name", ["human_reply.eml", "auto_gmail_vacation.eml", "auto_exchange_oof.eml"]
)
def test_mail_that_is_not_a_bounce_is_not_parsed_as_one(name: str) -> None:
    """A person's reply and out-of-office notes are not delivery status notifications."""
    message = message_from_bytes(fixture(name), policy=policy.default)
    assert parse_bounce(message, sender="ana@example.org", envelope_from=None) is None
