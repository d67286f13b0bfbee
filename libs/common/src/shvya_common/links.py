"""Build the public links the platform puts in outbound mail: one-click unsubscribe, the open pixel
and click redirects.

Every link carries one opaque token made by `shvya_common.tokens.sign` with `link_secret`, so it
exposes no guessable id and cannot be edited. The payloads are a contract with ingest, which
serves these URLs and verifies the tokens:

- unsubscribe `/u/{token}`: `{"c": company_id, "a": address, "ch": "email"}`
- open pixel `/t/o/{token}.gif`: `{"k": "o", "m": message_id}`
- click redirect `/t/c/{token}`: `{"k": "c", "m": message_id, "u": target_url}`

The `k` field keeps a pixel token from being replayed as a click token and vice versa.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from shvya_common.settings import CommonSettings
from shvya_common.tokens import sign

UNSUBSCRIBE_PATH = "/u/"
OPEN_PIXEL_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
KIND_OPEN = "o"
KIND_CLICK = "c"


def _link(settings: CommonSettings, path: str, payload: dict[str, Any], suffix: str = "") -> str:
    token = sign(settings.link_key(), payload)
    return f"{settings.public_base_url.rstrip('/')}{path}{token}{suffix}"


def email_address_key(address: str) -> str:
    """An address as leads and suppressions store it: trimmed, domain lower-cased (the local
    part is case-sensitive by RFC 5321, so it is kept)."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if local else address.strip()


def unsubscribe_payload(company_id: UUID | str, address: str) -> dict[str, Any]:
    """The signed content of an email unsubscribe token."""
    return {"c": str(company_id), "a": email_address_key(address), "ch": "email"}


def unsubscribe_url(settings: CommonSettings, company_id: UUID | str, address: str) -> str:
    """The RFC 8058 one-click unsubscribe URL for `address` (`List-Unsubscribe`, and the body)."""
    return _link(settings, UNSUBSCRIBE_PATH, unsubscribe_payload(company_id, address))


def open_pixel_url(settings: CommonSettings, message_id: UUID | str) -> str:
    """The URL of the 1x1 tracking GIF for the outbound message `message_id`."""
    return _link(settings, OPEN_PIXEL_PATH, {"k": KIND_OPEN, "m": str(message_id)}, ".gif")


def click_url(settings: CommonSettings, message_id: UUID | str, target_url: str) -> str:
    """A tracked link that records a click on `message_id` and then redirects to `target_url`."""
    if not target_url.lower().startswith(("http://", "https://")):
        raise ValueError("click tracking only wraps http(s) URLs")
    payload = {"k": KIND_CLICK, "m": str(message_id), "u": target_url}
    return _link(settings, CLICK_PATH, payload)
