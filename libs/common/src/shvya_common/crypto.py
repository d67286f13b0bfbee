"""Secrets at rest: channel tokens, SMTP passwords, DKIM keys and webhook secrets are stored
encrypted with AES-256-GCM (`cryptography`'s AEAD), under a keyring from settings.

    SECRETS_KEYS=k2:<base64url 32 bytes>,k1:<base64url 32 bytes>

The first key encrypts; every key decrypts, so rotating is: put a new key first, run
`SecretBox.reencrypt` over the stored values (or let them be rewritten), then drop the old key.
A stored value is `v1.<key id>.<base64url(nonce || ciphertext)>`, and each is bound to where it
is kept (`context`, e.g. "channel_accounts:<id>:token") as associated data, so a ciphertext
copied into another row or column does not decrypt. Nothing here logs or echoes a secret.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE_BYTES = 12


class SecretsError(Exception):
    """A keyring that cannot be used, or a stored value that does not decrypt."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate_key() -> str:
    """A new random key in the form SECRETS_KEYS takes (without its id)."""
    return _b64encode(os.urandom(32))


@dataclass(frozen=True)
class SecretBox:
    """Encrypts with the primary key, decrypts with any key of the ring."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        """Parse `id:key,id:key`; the first is the primary. Errors never include key material."""
        keys: list[tuple[str, bytes]] = []
        for n, part in enumerate(p.strip() for p in value.split(",") if p.strip()):
            kid, sep, material = part.partition(":")
            if not sep or not _KEY_ID.match(kid):
                raise SecretsError(f"SECRETS_KEYS entry {n + 1} is not '<id>:<base64 key>'")
            try:
                raw = _b64decode(material)
            except ValueError:
                raise SecretsError(f"SECRETS_KEYS key {kid!r} is not base64") from None
            if len(raw) != 32:
                raise SecretsError(f"SECRETS_KEYS key {kid!r} must be 32 bytes (AES-256)")
            if any(k == kid for k, _ in keys):
                raise SecretsError(f"SECRETS_KEYS names key {kid!r} twice")
            keys.append((kid, raw))
        if not keys:
            raise SecretsError("SECRETS_KEYS is empty")
        return cls(tuple(keys))

    @property
    def primary_id(self) -> str:
        return self.keys[0][0]

    def encrypt(self, plaintext: str, context: str) -> str:
        kid, key = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())
        return f"v1.{kid}.{_b64encode(nonce + sealed)}"

    def decrypt(self, stored: str, context: str) -> str:
        version, _, rest = stored.partition(".")
        kid, _, body = rest.partition(".")
        if version != "v1" or not body:
            raise SecretsError("not a stored secret")
        key = next((k for i, k in self.keys if i == kid), None)
        if key is None:
            raise SecretsError(f"stored secret uses key {kid!r}, which SECRETS_KEYS lacks")
        raw = _b64decode(body)
        try:
            opened = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SecretsError("stored secret does not decrypt here (wrong key or row)") from None
        return opened.decode()

    def needs_reencrypt(self, stored: str) -> bool:
        return not stored.startswith(f"v1.{self.primary_id}.")

    def reencrypt(self, stored: str, context: str) -> str:
        """The same secret under the primary key (unchanged if it already uses it)."""
        if not self.needs_reencrypt(stored):
            return stored
        return self.encrypt(self.decrypt(stored, context), context)
