"""WhatsApp user identifiers: phone numbers (wa_id) and business-scoped user ids (BSUIDs).

A BSUID is a two-letter country code, a period and up to 128 alphanumeric characters
(`US.13491208655302741918`); a parent BSUID has `ENT` in between (`US.ENT.1181…`). Meta asks that
they be stored and sent back exactly as received, so they are never normalised here, and the
check is loose (a country prefix and a dot): what tells them from phone numbers is that phone
numbers are digits.
"""

from __future__ import annotations

import re

_BSUID = re.compile(r"^[A-Za-z]{2}\.[A-Za-z0-9._-]{1,160}$")


def is_bsuid(value: str | None) -> bool:
    """True for a business-scoped user id (or a parent one), False for a phone number."""
    return bool(value) and _BSUID.match(value or "") is not None
