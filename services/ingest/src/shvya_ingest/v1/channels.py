"""A company's own channel accounts: its WhatsApp Cloud number, its email sender, its WhatsApp
Web account. Secrets (access token, app secret, SMTP password) are write-only: stored encrypted
with SECRETS_KEYS (`shvya_common.crypto`, each bound to its row and name) and never returned;
the answer says only which secrets are set.

    GET/POST /v1/channel-accounts, GET/PATCH/DELETE /v1/channel-accounts/{id}

    POST /v1/companies/{company_id}/channel-accounts    (the platform operator)

An account's `address` (the WhatsApp phone_number_id, the inbound mailbox) routes inbound
webhooks to its company (`inbound_routes`), so it can belong to one company only. A company
registering a WhatsApp number (or WABA) proves it owns it: Graph must show it to the account's
own access token (`shvya_common.whatsapp.ownership`). A number served by the platform's own Meta
app (no token of the company's, the platform's app secret signing its webhooks) and an inbound
mail address (the platform's MX takes the mail for it, so nothing the company sends proves it)
are attached by the platform operator, who vouches for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shvya_common.channel_accounts import (
    ACCOUNT_FIELDS,
    SECRET_FIELDS,
    check_config,
    open_secrets,
    route_address,
    seal_secrets,
)
from shvya_common.crypto import SecretsError
from shvya_common.whatsapp.ownership import NotProven, ProofUnavailable, prove_number
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, OperatorDep, Principal, PrincipalDep, audit
from shvya_ingest.v1.common import ERRORS, V1, AccountId, CompanyId, IngestDep, not_found

router = APIRouter(prefix="/v1", dependencies=V1, tags=["channel accounts"], responses=ERRORS)

AccountChannel = Literal["whatsapp_cloud", "email", "whatsapp_web"]


class AccountIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "whatsapp_cloud",
                    "name": "main number",
                    "config": {"phone_number_id": "106540352242922", "waba_id": "102290129340398"},
                    "secrets": {"access_token": "EAAG...", "app_secret": "0f1e2d..."},
                },
                {
                    "channel": "email",
                    "name": "sales mailbox",
                    "config": {
                        "smtp_host": "smtp.acme.example",
                        "smtp_port": 587,
                        "smtp_security": "starttls",
                        "smtp_user": "sales@acme.example",
                        "from_address": "sales@acme.example",
                        "from_name": "Acme Sales",
                    },
                    "secrets": {"smtp_password": "..."},
                },
                {
                    "channel": "email",
                    "name": "platform relay",
                    "config": {"from_address": "hello@globex.example", "from_name": "Globex"},
                },
                {"channel": "whatsapp_web", "name": "front desk", "config": {"account": "desk"}},
            ]
        }
    )

    channel: AccountChannel
    name: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, description="Write-only.")
    is_default: bool = True

    @model_validator(mode="after")
    def _known_fields(self) -> AccountIn:
        check_fields(self.channel, self.config, self.secrets)
        return self


class AccountPatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"is_default": True}, {"secrets": {"access_token": "EAAG..."}}
        )
    )

    config: dict[str, Any] | None = None
    secrets: dict[str, str] | None = Field(None, description="Write-only; replaces those named.")
    is_default: bool | None = None


class AccountOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.ACCOUNT_ID,
                "channel": "whatsapp_cloud",
                "name": "main number",
                "address": "106540352242922",
                "config": {"phone_number_id": "106540352242922", "waba_id": "102290129340398"},
                "secrets_set": ["access_token", "app_secret"],
                "is_default": True,
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    channel: str
    name: str
    address: str | None
    config: dict[str, Any]
    secrets_set: list[str] = Field(description="Names of the secrets stored; never their values.")
    is_default: bool
    created_at: datetime
    updated_at: datetime


def check_fields(channel: str, config: dict[str, Any], secrets: dict[str, str]) -> None:
    unknown = set(config) - ACCOUNT_FIELDS[channel]
    if unknown:
        raise ValueError(
            f"unknown config for {channel}: {', '.join(sorted(unknown))}; known:"
            f" {', '.join(sorted(ACCOUNT_FIELDS[channel]))}"
        )
    bad = set(secrets) - SECRET_FIELDS[channel]
    if bad:
        raise ValueError(
            f"unknown secrets for {channel}: {', '.join(sorted(bad))}; known:"
            f" {', '.join(sorted(SECRET_FIELDS[channel]))}"
        )
    check_config(channel, config)


_ACCOUNT = "id, channel, name, address, config, secrets, is_default, created_at, updated_at"


def _out(row: Any) -> AccountOut:
    return AccountOut(
        **{
            k: row[k]
            for k in (
                "id",
                "channel",
                "name",
                "address",
                "config",
                "is_default",
                "created_at",
                "updated_at",
            )
        },
        secrets_set=sorted(row["secrets"] or {}),
    )


async def _refuse_platform_number(
    conn: Any, ingest: Any, company_id: uuid.UUID, channel: str, address: str | None
) -> None:
    """The platform's own WhatsApp number (WHATSAPP_CLOUD_PHONE_ID) is the default company's:
    another company claiming it would receive the platform's webhooks."""
    platform = ingest.settings.whatsapp_cloud_phone_id
    if channel != "whatsapp_cloud" or address is None or address != platform:
        return
    if not await conn.fetchval("SELECT is_default FROM companies WHERE id = $1", company_id):
        raise HTTPException(409, f"{address} is the platform's own WhatsApp number")


async def _sync_route(
    conn: Any, company_id: uuid.UUID, channel: str, old: str | None, new: str | None
) -> None:
    if old and old != new:
        await conn.execute(
            "DELETE FROM inbound_routes WHERE channel = $1 AND address = $2 AND company_id = $3",
            channel,
            old,
            company_id,
        )
    if new:
        owner = await conn.fetchval(
            "INSERT INTO inbound_routes (channel, address, company_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (channel, address) DO UPDATE SET channel = EXCLUDED.channel"
            " RETURNING company_id",
            channel,
            new,
            company_id,
        )
        if owner != company_id:
            raise HTTPException(409, f"{new} is already another company's {channel} account")


_OWNED = ("phone_number_id", "waba_id")


async def _check_claims(
    ingest: Any,
    caller: Principal,
    channel: str,
    config: dict[str, Any],
    token: Callable[[], str | None],
    before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Refuse what a company claims but cannot prove: a WhatsApp number or WABA its token
    (`token()`, asked only when there is something to prove) cannot see on Graph (422; 502
    when Graph cannot be asked), and any inbound mail address (422; the operator sets those).
    Nothing for the operator, WhatsApp Web, or ids that did not change. Returns what the audit
    trail keeps of the proof."""
    if caller.kind == "operator":
        return {}
    if channel == "email":
        address = route_address("email", config)
        if address and address != route_address("email", before or {}):
            raise HTTPException(
                422,
                "an inbound_address routes the mail the platform receives for it into the"
                " company, and no answer from the company can prove the address is its own: the"
                " platform operator attaches it (POST /v1/companies/{company_id}/channel-accounts)"
                " once it has checked that",
            )
        return {}
    claimed = {f: config[f] for f in _OWNED if channel == "whatsapp_cloud" and config.get(f)}
    if not claimed or (before is not None and all(before.get(f) == v for f, v in claimed.items())):
        return {}
    secret = token()
    if not secret:
        raise HTTPException(
            422,
            "a WhatsApp Cloud account naming a phone_number_id or waba_id needs its own"
            " access_token: Graph showing the number to that token is the proof that the"
            " company owns it. A number served by the platform's own Meta app is attached by"
            " the platform operator (POST /v1/companies/{company_id}/channel-accounts)",
        )
    try:
        verified_name = await prove_number(ingest.settings, config, secret)
    except NotProven as err:
        raise HTTPException(422, str(err)) from None
    except ProofUnavailable as err:
        raise HTTPException(502, str(err)) from None
    return {"proven": sorted(claimed), "verified_name": verified_name}


def _stored_token(ingest: Any, account_id: uuid.UUID, row: Any) -> str | None:
    sealed = (row["secrets"] or {}).get("access_token")
    if not sealed:
        return None
    try:
        opened = open_secrets(_box(ingest), account_id, {"access_token": sealed})
    except SecretsError as err:
        raise HTTPException(503, str(err)) from err
    return opened["access_token"]


def _box(ingest: Any) -> Any:
    box = ingest.settings.secret_box()
    if box is None:
        raise HTTPException(
            503, "SECRETS_KEYS is not set: channel secrets cannot be stored (see `shvya keygen`)"
        )
    return box


@router.get("/channel-accounts", response_model=list[AccountOut], responses=ex.listed(AccountOut))
async def list_accounts(company_id: AdminCompany, ingest: IngestDep) -> list[AccountOut]:
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_ACCOUNT} FROM channel_accounts WHERE company_id = $1 ORDER BY created_at",
        company_id,
    )
    return [_out(r) for r in rows]


@router.post("/channel-accounts", response_model=AccountOut, status_code=201)
async def add_account(
    body: AccountIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> AccountOut:
    """A new account of the caller's company. A WhatsApp number or WABA it names must be
    visible on Graph to its own access token (the proof of ownership; 422 otherwise)."""
    return await _create(ingest, caller, company_id, body)


@router.post(
    "/companies/{company_id}/channel-accounts",
    response_model=AccountOut,
    status_code=201,
    tags=["companies"],
)
async def operator_add_account(
    company_id: CompanyId, body: AccountIn, ingest: IngestDep, caller: OperatorDep
) -> AccountOut:
    """An account for a company from the platform operator, who vouches for the number: e.g.
    one served by the platform's own Meta app, with no token of the company's."""
    if not await ingest.plat.pool.fetchval("SELECT true FROM companies WHERE id = $1", company_id):
        raise not_found("company", company_id)
    return await _create(ingest, caller, company_id, body)


async def _create(
    ingest: Any, caller: Principal, company_id: uuid.UUID, body: AccountIn
) -> AccountOut:
    account_id = uuid.uuid4()
    address = route_address(body.channel, body.config)
    try:
        sealed = seal_secrets(_box(ingest), account_id, body.secrets)
    except SecretsError as err:
        raise HTTPException(503, str(err)) from err
    proof = await _check_claims(
        ingest, caller, body.channel, body.config, lambda: body.secrets.get("access_token")
    )
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        await _refuse_platform_number(conn, ingest, company_id, body.channel, address)
        if body.is_default:
            await conn.execute(
                "UPDATE channel_accounts SET is_default = false WHERE company_id = $1"
                " AND channel = $2",
                company_id,
                body.channel,
            )
        try:
            row = await conn.fetchrow(
                "INSERT INTO channel_accounts (id, company_id, channel, name, address, config,"
                " secrets, is_default) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                f" RETURNING {_ACCOUNT}",
                account_id,
                company_id,
                body.channel,
                body.name,
                address,
                body.config,
                sealed,
                body.is_default,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "an account with this name or address exists") from None
        await _sync_route(conn, company_id, body.channel, None, address)
        await audit(
            conn,
            caller,
            company_id,
            "channel_account.created",
            {
                "account": str(account_id),
                "channel": body.channel,
                "secrets": sorted(body.secrets),
                **proof,
            },
        )
    ingest.whatsapp_owners.forget()
    return _out(row)


@router.get("/channel-accounts/{account_id}", response_model=AccountOut)
async def get_account(
    account_id: AccountId, company_id: AdminCompany, ingest: IngestDep
) -> AccountOut:
    row = await ingest.plat.pool.fetchrow(
        f"SELECT {_ACCOUNT} FROM channel_accounts WHERE id = $1 AND company_id = $2",
        account_id,
        company_id,
    )
    if row is None:
        raise not_found("channel account", account_id)
    return _out(row)


@router.patch("/channel-accounts/{account_id}", response_model=AccountOut)
async def patch_account(
    account_id: AccountId,
    body: AccountPatch,
    company_id: AdminCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
) -> AccountOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_ACCOUNT} FROM channel_accounts WHERE id = $1 AND company_id = $2 FOR UPDATE",
            account_id,
            company_id,
        )
        if row is None:
            raise not_found("channel account", account_id)
        config = {**row["config"], **(body.config or {})}
        try:
            check_fields(row["channel"], config, body.secrets or {})
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        secrets = dict(row["secrets"] or {})
        if body.secrets:
            secrets.update(seal_secrets(_box(ingest), account_id, body.secrets))
        proof = await _check_claims(
            ingest,
            caller,
            row["channel"],
            config,
            lambda: (
                (body.secrets or {}).get("access_token") or _stored_token(ingest, account_id, row)
            ),
            before=row["config"],
        )
        address = route_address(row["channel"], config)
        await _refuse_platform_number(conn, ingest, company_id, row["channel"], address)
        if body.is_default:
            await conn.execute(
                "UPDATE channel_accounts SET is_default = false WHERE company_id = $1"
                " AND channel = $2 AND id <> $3",
                company_id,
                row["channel"],
                account_id,
            )
        updated = await conn.fetchrow(
            "UPDATE channel_accounts SET config = $2, secrets = $3, address = $4,"
            " is_default = coalesce($5, is_default), updated_at = now()"
            f" WHERE id = $1 RETURNING {_ACCOUNT}",
            account_id,
            config,
            secrets,
            address,
            body.is_default,
        )
        await _sync_route(conn, company_id, row["channel"], row["address"], address)
        await audit(
            conn,
            caller,
            company_id,
            "channel_account.updated",
            {"account": str(account_id), "secrets": sorted(body.secrets or {}), **proof},
        )
    ingest.whatsapp_owners.forget()
    return _out(updated)


@router.delete("/channel-accounts/{account_id}", status_code=204)
async def delete_account(
    account_id: AccountId, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> Response:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "DELETE FROM channel_accounts WHERE id = $1 AND company_id = $2"
            " RETURNING channel, address",
            account_id,
            company_id,
        )
        if row is None:
            raise not_found("channel account", account_id)
        await _sync_route(conn, company_id, row["channel"], row["address"], None)
        await audit(
            conn, caller, company_id, "channel_account.deleted", {"account": str(account_id)}
        )
    ingest.whatsapp_owners.forget()
    return Response(status_code=204)
