"""Contact addresses: phone numbers to E.164 with `phonenumbers`, email addresses with their
domain lower-cased."""

from __future__ import annotations

from email import policy
from functools import lru_cache
from typing import Any

import phonenumbers

MAX_E164_DIGITS = 15


class AddressError(ValueError):
    """The contact address cannot be understood."""


# Parsing costs ~70 µs and leads write again and again from the same numbers.
@lru_cache(maxsize=16_384)
def normalise_phone(raw: str, default_region: str | None = None) -> str:
    """E.164 for a number with a country code, or local to `default_region`.

    Numbers that parse but are not assigned (test numbers such as +1234567890) are accepted:
    whether a number exists is the channel's verdict, not ours.
    """
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as err:
        raise AddressError(f"phone_number {raw!r} is not a phone number: {err}") from err
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits = len(formatted) - 1
    if digits < 7 or digits > MAX_E164_DIGITS:
        raise AddressError(f"phone_number {raw!r} has {digits} digits; E.164 allows 7 to 15")
    return formatted


def normalise_email(raw: str) -> str:
    """The address of `raw`, its domain lower-cased; RFC 5322 forms (`Name <addr>`, a quoted
    name, an encoded-word name) are accepted wherever an address is, and give their address."""
    value = raw.strip()
    if any(mark in value for mark in ("<", '"', "=?")):
        found: tuple[Any, ...]
        try:
            found = tuple(getattr(policy.default.header_factory("to", value), "addresses", ()))
        except (IndexError, ValueError, TypeError):
            found = ()
        if len(found) != 1 or not found[0].addr_spec:
            raise AddressError(f"{raw!r} is not one email address")
        value = found[0].addr_spec
    local, _, domain = value.rpartition("@")
    if not local or "." not in domain or " " in value or len(value) > 254:
        raise AddressError(f"{raw!r} is not an email address")
    return f"{local}@{domain.lower()}"
