"""A company's channel accounts (`channel_accounts`): what each channel's account holds, how its
secrets are sealed, and how services look accounts up.

Secrets are sealed with the SECRETS_KEYS keyring (`shvya_common.crypto.SecretBox`), each bound to
`channel_accounts:<account id>:<name>`, so a sealed value copied to another row does not open.
Only dispatch (which sends) and ingest's webhooks (which verify signatures) open them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from shvya_common.crypto import SecretBox

ACCOUNT_FIELDS: dict[str, frozenset[str]] = {
    "whatsapp_cloud": frozenset({"phone_number_id", "waba_id", "api_version", "base_url"}),
    "email": frozenset(
        {
            "smtp_host",
            "smtp_port",
            "smtp_security",
            "smtp_user",
            "from_address",
            "from_name",
            "reply_to",
            "inbound_address",
        }
    ),
    "whatsapp_web": frozenset({"account"}),
}
SECRET_FIELDS: dict[str, frozenset[str]] = {
    "whatsapp_cloud": frozenset({"access_token", "app_secret"}),
    "email": frozenset({"smtp_password"}),
    "whatsapp_web": frozenset(),
}
# The config field an inbound webhook names, which routes it to the account's company.
ROUTE_FIELD = {"whatsapp_cloud": "phone_number_id", "email": "inbound_address"}


def route_address(channel: str, config: dict[str, Any]) -> str | None:
    field = ROUTE_FIELD.get(channel)
    value = config.get(field) if field else None
    if value is None:
        return None
    text = str(value).strip()
    return text.lower() if channel == "email" else text


def _context(account_id: uuid.UUID, name: str) -> str:
    return f"channel_accounts:{account_id}:{name}"


def seal_secrets(box: SecretBox, account_id: uuid.UUID, secrets: dict[str, str]) -> dict[str, str]:
    return {name: box.encrypt(value, _context(account_id, name)) for name, value in secrets.items()}


def open_secrets(box: SecretBox, account_id: uuid.UUID, sealed: dict[str, str]) -> dict[str, str]:
    return {name: box.decrypt(value, _context(account_id, name)) for name, value in sealed.items()}


@dataclass(frozen=True)
class Account:
    """One channel account with its secrets opened."""

    id: uuid.UUID
    company_id: uuid.UUID
    channel: str
    name: str
    address: str | None
    config: dict[str, Any]
    secrets: dict[str, str]

    def fingerprint(self) -> str:
        """A one-way mark of the credentials, to notice when they change."""
        import hashlib

        material = "|".join(f"{k}={v}" for k, v in sorted(self.secrets.items()))
        return hashlib.sha256(material.encode()).hexdigest()[:16]


_COLUMNS = "id, company_id, channel, name, address, config, secrets"


def _account(box: SecretBox | None, row: asyncpg.Record) -> Account:
    sealed = row["secrets"] or {}
    if sealed and box is None:
        raise LookupError("SECRETS_KEYS is not set, so channel account secrets cannot be opened")
    opened = open_secrets(box, row["id"], sealed) if box is not None and sealed else {}
    return Account(
        row["id"],
        row["company_id"],
        row["channel"],
        row["name"],
        row["address"],
        dict(row["config"] or {}),
        opened,
    )


async def default_account(
    conn: asyncpg.Connection | asyncpg.Pool,
    box: SecretBox | None,
    company_id: uuid.UUID,
    channel: str,
) -> Account | None:
    """The company's default account on `channel`, or None (the platform's own settings)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM channel_accounts WHERE company_id = $1 AND channel = $2"
        " ORDER BY is_default DESC, created_at LIMIT 1",
        company_id,
        channel,
    )
    return _account(box, row) if row is not None else None


async def account_at(
    conn: asyncpg.Connection | asyncpg.Pool, box: SecretBox | None, channel: str, address: str
) -> Account | None:
    """The account that owns an inbound address (a phone_number_id, a mailbox)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM channel_accounts WHERE channel = $1 AND address = $2",
        channel,
        address,
    )
    return _account(box, row) if row is not None else None
