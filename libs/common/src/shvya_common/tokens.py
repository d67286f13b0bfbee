"""Opaque, signed tokens for links the platform puts in messages: one-click unsubscribe, open
pixels and click redirects.

A token is `base64url(payload).base64url(hmac_sha256(secret, payload))[:16 bytes]`, where the
payload is compact JSON. Links carry no guessable ids, and a click redirect can only go to a URL
that the platform itself signed into the mail. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

_SIG_BYTES = 16


class TokenError(ValueError):
    """The token is malformed or was not signed with our secret."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(secret.encode(), raw, hashlib.sha256).digest()[:_SIG_BYTES]
    return f"{_b64(raw)}.{_b64(mac)}"


def verify(secret: str, token: str) -> dict[str, Any]:
    try:
        body, sig = token.split(".", 1)
        raw, mac = _unb64(body), _unb64(sig)
    except (ValueError, UnicodeError) as err:
        raise TokenError("malformed token") from err
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).digest()[:_SIG_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise TokenError("token signature does not match")
    try:
        payload = json.loads(raw)
    except ValueError as err:
        raise TokenError("malformed token payload") from err
    if not isinstance(payload, dict):
        raise TokenError("malformed token payload")
    return payload
