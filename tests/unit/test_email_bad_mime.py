"""Mail as it really arrives, not as RFC 2045 wants it: text in a charset no codec knows
(`unknown-8bit`, a misspelt or empty name), raw 8-bit header bytes, NUL characters, a Message-ID
the standard library's parser trips over, and a bounce written in `unknown-8bit`. Each is read
as well as it can be, and only a message that truly cannot be parsed is refused, as an
`EmailError` every door answers as mail that can never be filed."""

from __future__ import annotations

import pytest

from shvya_ingest.bounces import parse_bounce
from shvya_ingest.mail import EmailError, UnparseableEmail, as_message, parse_mime

HEAD = b"From: Ana Lead <ana@example.org>\r\nTo: sales@acme-solar.example\r\nSubject: Quote\r\n"


def too_deep(depth: int = 1500) -> bytes:
    """A multipart nested deeper than the parser can follow (a mail bomb)."""
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    closing = b"".join(f"\r\n--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return (
        HEAD + b"MIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhi" + closing
    )


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        # What many MTAs write when they do not know: here windows-1252 bytes.
        (b"text/plain; charset=unknown-8bit", b"Caf\xe9 \x93ol\xe9\x94", "Café “olé”"),
        (b"text/plain; charset=unknown-8bit", "Café olé".encode(), "Café olé"),
        (b"text/plain; charset=x-no-such-charset", b"hello", "hello"),
        (b'text/plain; charset=""', b"hello", "hello"),
        (b"text/plain; charset=base64", b"hello", "hello"),  # a codec, but no text encoding
        (b'text/plain; charset="utf-8\x00"', b"hello", "hello"),
        (b"text/plain", "Grüße".encode(), "Grüße"),  # 8-bit UTF-8 with no charset said
    ],
)
def test_text_in_an_unknown_or_invalid_charset_is_read(
    content_type: bytes, body: bytes, expected: str
) -> None:
    raw = HEAD + b"Content-Type: " + content_type + b"\r\n\r\n" + body + b"\r\n"
    email = parse_mime(raw, source="imap")
    assert email.text.strip() == expected
    assert email.sender == "ana@example.org"


def test_html_in_an_unknown_charset_is_read() -> None:
    raw = HEAD + b"Content-Type: text/html; charset=unknown-8bit\r\n\r\n<p>Caf\xe9</p>\r\n"
    assert (parse_mime(raw).html or "").strip() == "<p>Café</p>"


def test_nul_characters_and_raw_header_bytes_become_storable_text() -> None:
    """PostgreSQL stores no NUL and no lone surrogate (what the parser leaves for raw 8-bit
    header bytes): the body, subject and names come out without them."""
    raw = (
        b"From: Jos\xe9 Ruiz <jose@example.org>\r\nSubject: Pre\x00cio\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nHola,\x00 precio?\r\n"
    )
    email = parse_mime(raw)
    assert email.text.strip() == "Hola, precio?"
    assert email.subject == "Precio"
    assert email.sender_name == "José Ruiz"
    for value in [email.text, email.subject, email.sender_name, *sum(email.headers, ())]:
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogate left


def test_a_message_id_the_header_parser_trips_over_is_kept_raw() -> None:
    """The standard library raises IndexError on `Message-ID: <<<>>>`; the mail is still read
    (with the digest of its bytes as its id) and its other headers listed."""
    raw = HEAD + b"Message-ID: <<<>>>\r\nReferences: <<<>>>\r\n\r\nhello\r\n"
    email = parse_mime(raw)
    assert email.text.strip() == "hello"
    assert email.message_id is not None and email.message_id.startswith("sha256:")
    assert ("Message-ID", "<<<>>>") in email.headers


def test_a_message_too_deep_to_parse_is_an_email_error() -> None:
    with pytest.raises(UnparseableEmail, match="cannot be parsed") as raised:
        parse_mime(too_deep())
    assert isinstance(raised.value, EmailError)


def test_a_bounce_in_unknown_8bit_is_read_as_a_bounce() -> None:
    """A DSN whose human-readable part is `unknown-8bit` (Postfix writes one for 8-bit
    diagnostics) is still a hard bounce of its recipient."""
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: sales@acme-solar.example\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.example.net>\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\r\n"
        b"<gone@example.com>: host said: 550 5.1.1 Benutzer unbekannt \xfc\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <<<>>>\r\nFrom: a@b.example\r\n"
        b"\r\nx\r\n--b--\r\n"
    )
    email = parse_mime(raw)
    bounce = parse_bounce(as_message(email), sender=email.sender, envelope_from=None)
    assert bounce is not None
    assert [(r.address, r.kind, r.status) for r in bounce.recipients] == [
        ("gone@example.com", "hard", "5.1.1")
    ]
