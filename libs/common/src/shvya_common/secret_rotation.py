"""Every secret the database keeps sealed, and `rotate`, which re-seals them all under the primary
key of SECRETS_KEYS (`shvya rotate-secrets`).

The stored secrets, each bound to where it is kept (`shvya_common.crypto`):

    channel_accounts.secrets   one value per name  "channel_accounts:<account id>:<name>"
    email_dkim_keys.private_key                     "email_dkim_keys:<company id>:<domain>"
    email_mailboxes.password                        "email_mailboxes:<mailbox id>:password"

Rotating a key: put the new key first in SECRETS_KEYS (keeping the old one after it), restart
the services, run `shvya rotate-secrets`, and once it reports that nothing uses the old key,
drop it from SECRETS_KEYS. Each row is re-sealed in its own short transaction with the row locked,
so a value written meanwhile (a new token through the API) is never overwritten with an older
one; running the command again is harmless. Nothing here prints or logs a secret.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from shvya_common.channel_accounts import secret_context
from shvya_common.crypto import SecretBox, SecretsError


def dkim_key_context(company_id: object, domain: str) -> str:
    """Where a company's DKIM private key is kept."""
    return f"email_dkim_keys:{company_id}:{domain.lower()}"


def mailbox_password_context(mailbox_id: uuid.UUID) -> str:
    """Where an IMAP mailbox's password is kept."""
    return f"email_mailboxes:{mailbox_id}:password"


def key_id(stored: str) -> str | None:
    """The id of the key a stored value was sealed with (`v1.<id>.<data>`)."""
    version, _, rest = stored.partition(".")
    kid, _, body = rest.partition(".")
    return kid if version == "v1" and body else None


@dataclass
class RotationReport:
    """What a rotation did, per table, and which key ids the stored values use afterwards."""

    primary: str
    rewritten: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    # (table, row, why): values that did not open with any key of the ring; left untouched.
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    keys_in_use: Counter[str] = field(default_factory=Counter)

    @property
    def old_keys_in_use(self) -> list[str]:
        return sorted(k for k in self.keys_in_use if k != self.primary)

    def lines(self) -> list[str]:
        """A summary for people: counts and key ids, never a value."""
        out = []
        for table in sorted(set(self.rewritten) | set(self.unchanged)):
            out.append(
                f"{table}: {self.rewritten[table]} re-sealed, {self.unchanged[table]} already"
                f" under {self.primary}"
            )
        for table, row, why in self.failed:
            out.append(f"{table} {row}: NOT re-sealed ({why})")
        if self.failed or self.old_keys_in_use:
            used = ", ".join(self.old_keys_in_use) or "unknown"
            out.append(f"keys still in use besides {self.primary}: {used}; keep them for now")
        else:
            out.append(
                f"every stored secret uses key {self.primary}; the other keys of SECRETS_KEYS"
                " may now be removed"
            )
        return out


async def _channel_accounts(
    conn: asyncpg.Connection, box: SecretBox, report: RotationReport
) -> None:
    table = "channel_accounts"
    for row in await conn.fetch("SELECT id FROM channel_accounts WHERE secrets <> '{}'::jsonb"):
        async with conn.transaction():
            sealed = await conn.fetchval(
                "SELECT secrets FROM channel_accounts WHERE id = $1 FOR UPDATE", row["id"]
            )
            if not sealed:
                continue
            fresh: dict[str, str] = {}
            try:
                for name, value in sealed.items():
                    fresh[name] = box.reencrypt(value, secret_context(row["id"], name))
            except SecretsError as err:
                report.failed.append((table, str(row["id"]), str(err)))
                report.keys_in_use.update(filter(None, (key_id(v) for v in sealed.values())))
                continue
            if fresh == sealed:
                report.unchanged[table] += 1
            else:
                await conn.execute(
                    "UPDATE channel_accounts SET secrets = $2 WHERE id = $1", row["id"], fresh
                )
                report.rewritten[table] += 1
            report.keys_in_use.update(filter(None, (key_id(v) for v in fresh.values())))


async def _column(
    conn: asyncpg.Connection,
    box: SecretBox,
    report: RotationReport,
    table: str,
    column: str,
    keys: tuple[str, ...],
    context: Callable[..., str],
) -> None:
    """Re-seal one encrypted column; `keys` name the row, `context(*key values)` its binding."""
    where = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(keys))
    n = len(keys)
    for row in await conn.fetch(f"SELECT {', '.join(keys)} FROM {table}"):
        ident = tuple(row[k] for k in keys)
        async with conn.transaction():
            stored = await conn.fetchval(
                f"SELECT {column} FROM {table} WHERE {where} FOR UPDATE", *ident
            )
            if stored is None:
                continue
            try:
                fresh = box.reencrypt(stored, context(*ident))
            except SecretsError as err:
                report.failed.append((table, ":".join(map(str, ident)), str(err)))
                report.keys_in_use[key_id(stored) or "unreadable"] += 1
                continue
            if fresh == stored:
                report.unchanged[table] += 1
            else:
                await conn.execute(
                    f"UPDATE {table} SET {column} = ${n + 1} WHERE {where}", *ident, fresh
                )
                report.rewritten[table] += 1
            report.keys_in_use[box.primary_id] += 1


async def rotate(conn: asyncpg.Connection, box: SecretBox) -> RotationReport:
    """Re-seal every stored secret under `box`'s primary key; values it cannot open are reported
    and left as they are."""
    report = RotationReport(box.primary_id)
    await _channel_accounts(conn, box, report)
    await _column(
        conn,
        box,
        report,
        "email_dkim_keys",
        "private_key",
        ("company_id", "domain"),
        dkim_key_context,
    )
    await _column(
        conn, box, report, "email_mailboxes", "password", ("id",), mailbox_password_context
    )
    return report
