"""DKIM signing (RFC 6376) per company and sending domain, with dkimpy, so mail still verifies
when the relay does not sign.

A company stores one RSA key per From domain (`email_dkim_keys`), encrypted at rest with
SECRETS_KEYS. The signature covers the headers mailbox providers check, including
List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 §4 requires them signed for one-click), with
relaxed header and simple body canonicalisation, the common choice that survives relays which
refold headers. `python -m shvya_dispatch email-dkim-key` makes or imports a key and prints the
DNS record to publish.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shvya_common.crypto import SecretBox

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"auto-submitted",
)


def key_context(company_id: object, domain: str) -> str:
    """Where a DKIM key is kept, bound into its ciphertext (see shvya_common.crypto)."""
    return f"email_dkim_keys:{company_id}:{domain.lower()}"


@dataclass(frozen=True)
class DkimKey:
    """A decrypted signing key: `d=` domain, `s=` selector, PKCS#1 PEM private key."""

    domain: str
    selector: str
    private_pem: bytes

    def sign(self, message: bytes) -> bytes:
        """`message` with its DKIM-Signature header prepended."""
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")
        }
        headers = [h for h in SIGNED_HEADERS if h in present]
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"simple"),
            include_headers=headers,
        )
        return bytes(signature) + message


def open_key(
    box: SecretBox | None, company_id: object, domain: str, selector: str, stored: str
) -> DkimKey:
    """Decrypt a stored key; raises SecretsError when SECRETS_KEYS cannot open it."""
    from shvya_common.crypto import SecretsError

    if box is None:
        raise SecretsError("a DKIM key is stored but SECRETS_KEYS is not set")
    pem = box.decrypt(stored, key_context(company_id, domain)).encode()
    return DkimKey(domain.lower(), selector, pem)


def generate_private_key(bits: int = 2048) -> bytes:
    """A new RSA key as PKCS#1 PEM (the form dkimpy reads)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def normalise_private_key(pem: bytes) -> bytes:
    """Any PEM RSA private key (PKCS#1 or PKCS#8) as PKCS#1 PEM; ValueError otherwise."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("only RSA keys are supported for DKIM (rsa-sha256)")
    if key.key_size < 1024:
        raise ValueError("DKIM keys must have at least 1024 bits (2048 recommended)")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def dns_record(private_pem: bytes) -> str:
    """The TXT record value to publish at `<selector>._domainkey.<domain>`."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
