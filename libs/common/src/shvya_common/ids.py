"""Row ids that sort by creation time (UUIDv7, RFC 9562 section 5.7).

A random (v4) key puts every insert on a random leaf of its index: once the hot tables' indexes
outgrow PostgreSQL's shared buffers (millions of messages), each insert reads a page and,
after every checkpoint, writes a whole page image to the WAL (performance.md measured ~3.6
such images per message at 5,000,000 messages, doubling the WAL). A v7 key starts with the
millisecond, so the inserts of a moment share the rightmost leaves, which stay in memory.

Written here rather than taken from a package: the standard library's `uuid.uuid7` arrives in
Python 3.14, and the format is 48 bits of Unix milliseconds, the version, 74 random bits and
the variant. Ids made in the same millisecond are not ordered among themselves (nothing here
needs that; the index locality does not). The database side is migration 0020's
`shvya_uuid7()`, the default of the hot tables' ids."""

from __future__ import annotations

import os
import time
import uuid

_RANDOM_BITS = (1 << 80) - 1
_VERSION = 7 << 76
_VARIANT = 0b10 << 62
_CLEAR = ~((0xF << 76) | (0b11 << 62))


def new_id() -> uuid.UUID:
    """A UUIDv7 for a row written now."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & _RANDOM_BITS
    return uuid.UUID(int=(value & _CLEAR) | _VERSION | _VARIANT)
