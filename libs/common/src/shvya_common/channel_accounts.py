"""A company's channel accounts (`channel_accounts`): what each channel's account holds, how its
secrets are sealed, and how services look accounts up.

Secrets are sealed with the SECRETS_KEYS keyring (`shvya_common.crypto.SecretBox`), each bound to
`channel_accounts:<account id>:<name>`, so a sealed value copied to another row does not open.
Only dispatch (which sends) and ingest's webhooks (which verify signatures) open them;
`shvya rotate-secrets` re-seals them under the primary key (`shvya_common.secret_rotation`).

A WhatsApp Web account's browser profile is named after the account (`web_profile`), never after
anything a company typed, so one company can never drive another's linked WhatsApp.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shvya_common.crypto import SecretBox, SecretsError

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
_DIGITS = r"^\d{1,30}$"
_ADDRESS = r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$"
_HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"


class _WhatsAppCloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    phone_number_id: str | None = Field(None, pattern=_DIGITS)
    waba_id: str | None = Field(None, pattern=_DIGITS)
    api_version: str | None = Field(None, pattern=r"^v?\d+\.\d+$")
    base_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=300)


class _EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    smtp_host: str | None = Field(None, pattern=_HOST)
    smtp_port: int | None = Field(None, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] | None = None
    smtp_user: str | None = Field(None, min_length=1, max_length=320)
    from_address: str | None = Field(None, pattern=_ADDRESS, max_length=320)
    from_name: str | None = Field(None, max_length=200)
    reply_to: str | None = Field(None, pattern=_ADDRESS, max_length=320)
    inbound_address: str | None = Field(None, pattern=_ADDRESS, max_length=320)


class _WhatsAppWebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # A label for people; the browser profile is always `web_profile(account id)`.
    account: str | None = Field(None, min_length=1, max_length=100)


_CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "whatsapp_cloud": _WhatsAppCloudConfig,
    "email": _EmailConfig,
    "whatsapp_web": _WhatsAppWebConfig,
}


def check_config(channel: str, config: dict[str, Any]) -> None:
    """Raise ValueError naming each config value of the wrong form (types, patterns, ranges)."""
    try:
        _CONFIG_MODELS[channel].model_validate(config)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"config for {channel}: {problems}") from None


# The config field an inbound webhook names, which routes it to the account's company.
ROUTE_FIELD = {"whatsapp_cloud": "phone_number_id", "email": "inbound_address"}


def route_address(channel: str, config: dict[str, Any]) -> str | None:
    field = ROUTE_FIELD.get(channel)
    value = config.get(field) if field else None
    if value is None:
        return None
    text = str(value).strip()
    return text.lower() if channel == "email" else text


def secret_context(account_id: uuid.UUID, name: str) -> str:
    """Where one sealed secret of an account is kept, bound into its ciphertext."""
    return f"channel_accounts:{account_id}:{name}"


def seal_secrets(box: SecretBox, account_id: uuid.UUID, secrets: dict[str, str]) -> dict[str, str]:
    return {
        name: box.encrypt(value, secret_context(account_id, name))
        for name, value in secrets.items()
    }


def open_secrets(box: SecretBox, account_id: uuid.UUID, sealed: dict[str, str]) -> dict[str, str]:
    return {
        name: box.decrypt(value, secret_context(account_id, name)) for name, value in sealed.items()
    }


def web_profile(account_id: uuid.UUID) -> str:
    """The WhatsApp Web browser profile (a folder under WHATSAPP_WEB_PROFILE_DIR) of an account."""
    return f"ca-{account_id}"


@dataclass(frozen=True, repr=False)
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
        material = "|".join(f"{k}={v}" for k, v in sorted(self.secrets.items()))
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def version(self) -> str:
        """A one-way mark of everything the account holds: a change means a new adapter."""
        config = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(f"{config}|{self.fingerprint()}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        # The dataclass repr would print the opened secrets; only their names are shown.
        return (
            f"Account(id={self.id}, company_id={self.company_id}, channel={self.channel!r},"
            f" name={self.name!r}, secrets={sorted(self.secrets)})"
        )


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


async def accounts_on(
    conn: asyncpg.Connection | asyncpg.Pool, box: SecretBox | None, channel: str
) -> list[Account]:
    """Every company's default account on `channel` (for work that runs per account, such as
    the template sync); accounts whose secrets do not open are left out, with the error
    raised only by the send that needs them."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM channel_accounts WHERE channel = $1 AND is_default"
        " ORDER BY created_at",
        channel,
    )
    found: list[Account] = []
    for row in rows:
        try:
            found.append(_account(box, row))
        except (LookupError, SecretsError):
            continue
    return found


async def accounts_with_waba(
    conn: asyncpg.Connection | asyncpg.Pool, box: SecretBox | None, waba_id: str
) -> list[Account]:
    """The WhatsApp Cloud accounts that name this WhatsApp Business Account."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM channel_accounts WHERE channel = 'whatsapp_cloud'"
        " AND config->>'waba_id' = $1 ORDER BY created_at",
        waba_id,
    )
    return [_account(box, row) for row in rows]
