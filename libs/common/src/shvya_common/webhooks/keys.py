"""Endpoint signing secrets: `whsec_` followed by base64 of random bytes, as Standard Webhooks
writes them, so `standardwebhooks.Webhook(secret)` takes one as it is. Stored encrypted
(`SecretBox`), bound to their row and column by the context; shown once, when created or
rotated, and never logged."""

from __future__ import annotations

import base64
import binascii
import os
import uuid

PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_BYTES, MAX_BYTES = 24, 64


def new_secret() -> str:
    """A fresh secret: whsec_ + base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """`secret` when it is whsec_ + base64 of 24 to 64 bytes; ValueError otherwise."""
    if not secret.startswith(PREFIX):
        raise ValueError("a signing secret starts with 'whsec_'")
    try:
        raw = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("after 'whsec_' a signing secret is base64") from None
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise ValueError(f"a signing secret holds {MIN_BYTES} to {MAX_BYTES} bytes")
    return secret


def secret_context(endpoint_id: uuid.UUID, column: str = "secret") -> str:
    """The SecretBox context of an endpoint's `secret` or `previous_secret`."""
    return f"webhook_endpoints:{endpoint_id}:{column}"
