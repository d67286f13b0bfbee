"""Console users' passwords: scrypt from hashlib, salted, its cost stored with each hash.

    scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>

`check_password` runs in constant time for a given hash, and `dummy_hash()` lets a sign-in with
an unknown email spend the same time as one with a wrong password.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os

_N, _R, _P = 2**14, 8, 1
# The shortest password a console user may have, through the API or CONSOLE_ADMIN_PASSWORD.
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def dummy_hash() -> str:
    """A hash no password matches, checked when the email is unknown."""
    return hash_password(os.urandom(16).hex())
