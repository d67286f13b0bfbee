"""Email addresses in RFC 5322 form are accepted wherever an address is (/inbound-message, a
lead's email, sequence enrolment), as the mail doors already accept them."""

from __future__ import annotations

import pytest

from shvya_ingest.phone import AddressError, normalise_email


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("ana@Example.ORG", "ana@example.org"),
        ("  ana@example.org ", "ana@example.org"),
        ("Ana Lead <ana@Example.org>", "ana@example.org"),
        ('"Lead, Ana" <ana@example.org>', "ana@example.org"),
        ("=?utf-8?q?Ana_L=C3=B3pez?= <ana@example.org>", "ana@example.org"),
        ("<ana@example.org>", "ana@example.org"),
    ],
)
def test_named_forms_give_their_address(raw: str, address: str) -> None:
    assert normalise_email(raw) == address


@pytest.mark.parametrize(
    "raw",
    ["Ana Lead", "Ana <not an address>", "a@b.org, c@d.org", "Ana <a@b.org>, Bo <c@d.org>", "x@y"],
)
def test_what_is_not_one_address_is_refused(raw: str) -> None:
    with pytest.raises(AddressError):
        normalise_email(raw)
