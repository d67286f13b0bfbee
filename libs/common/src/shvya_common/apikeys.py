"""Company API keys as they are made and stored: `shvya_<8 hex>_<secret>`, shown once, kept as
a SHA-256 with the visible prefix `shvya_<8 hex>` that tells keys apart. Ingest checks them
(`shvya_ingest.auth`); ingest's `/v1/api-keys` routes and the operator's `shvya keys` make and
revoke them."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "shvya_"


def new_key() -> tuple[str, str, str]:
    """A fresh key: (the key to show once, its prefix, its hash)."""
    ident = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    return key, f"{KEY_PREFIX}{ident}", hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The visible prefix of something shaped like a key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    ident, sep, rest = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not rest or len(ident) != 8:
        return None
    return f"{KEY_PREFIX}{ident}"
