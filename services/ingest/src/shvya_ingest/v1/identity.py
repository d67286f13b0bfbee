"""Companies (the operator's), the caller's own company, API keys and users.

    POST  /v1/companies                 operator: a company and its first admin key (shown once)
    GET   /v1/companies                 operator: every company
    GET   /v1/companies/{id}            operator
    PATCH /v1/companies/{id}            operator
    POST  /v1/companies/{id}/api-keys   operator: another admin key for a company (shown once)
    GET   /v1/company                   any key: its company
    PATCH /v1/company                   admin: name, time zone, settings
    GET   /v1/api-keys                  admin: the company's keys (prefixes, never the keys)
    POST  /v1/api-keys                  admin: a new key with a role (shown once)
    DELETE /v1/api-keys/{id}            admin: revoke
    GET/POST /v1/users, GET/PATCH/DELETE /v1/users/{id}   admin: console users

Every change here writes an `audit.action` event (who, what, when).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shvya_common.apikeys import insert_key
from shvya_common.passwords import MIN_PASSWORD_LENGTH, hash_password
from shvya_ingest import examples as ex
from shvya_ingest.auth import (
    AdminCompany,
    OperatorDep,
    Principal,
    PrincipalDep,
    Role,
    audit,
    company_of,
)
from shvya_ingest.repository import DEFAULT_STAGES
from shvya_ingest.v1.common import ERRORS, V1, ApiKeyId, CompanyId, IngestDep, UserId, not_found

router = APIRouter(
    prefix="/v1", dependencies=V1, tags=["companies, keys and users"], responses=ERRORS
)

AnyCompany = Annotated[uuid.UUID, Depends(company_of("admin", "agent", "ingest"))]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return value


class CompanyIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Acme Solar", "timezone": "Europe/Berlin"}]}
    )

    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", max_length=64, description="IANA time zone of the company.")
    settings: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(lambda cls, v: _zone(v))


class CompanyPatch(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"timezone": "America/New_York"}]})

    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, max_length=64)
    settings: dict[str, Any] | None = Field(
        None, description="Merged into the company's settings (a key set to null is removed)."
    )

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str | None) -> str | None:
        return _zone(value) if value is not None else None


class CompanyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.COMPANY_ID,
                "name": "Acme Solar",
                "is_default": False,
                "timezone": ex.TIMEZONE,
                "settings": {"ai_persona": "friendly"},
                "created_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    name: str
    is_default: bool = Field(
        description="The company anonymous loopback requests file into (INBOUND_AUTH)."
    )
    timezone: str
    settings: dict[str, Any]
    created_at: datetime


class KeyIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "website form", "role": "ingest"}]}
    )

    name: str = Field(min_length=1, max_length=100, description="What the key is for.")
    role: Role = Field(description="admin, agent or ingest.")


class KeyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.KEY_ID,
                "name": "website form",
                "role": "ingest",
                "prefix": "shvya_3f9a0c1d",
                "created_by": "key:shvya_8e21b7aa",
                "created_at": ex.CREATED,
                "last_used_at": ex.UPDATED,
                "revoked_at": None,
            }
        )
    )

    id: uuid.UUID
    name: str
    role: Role
    prefix: str = Field(description="The visible start of the key, to tell keys apart.")
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                **ex.example_of(KeyOut),
                "last_used_at": None,
                "key": "shvya_3f9a0c1d_EXAMPLE-not-a-real-key-0000000000000000",
            }
        )
    )

    key: str = Field(description="The key itself. Shown this once; only its hash is kept.")


class NewCompanyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "company": ex.example_of(CompanyOut),
                "admin_key": {
                    **ex.example_of(NewKeyOut),
                    "name": "first admin",
                    "role": "admin",
                    "created_by": "operator",
                },
            }
        )
    )

    company: CompanyOut
    admin_key: NewKeyOut


UserRole = Literal["admin", "agent", "viewer"]


class UserIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "rep@acme.example",
                    "full_name": "Rita Rep",
                    "role": "agent",
                    "password": "a long passphrase",
                }
            ]
        }
    )

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    full_name: str | None = Field(None, max_length=200)
    role: UserRole = "agent"
    password: str | None = Field(
        None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=200,
        description="For signing in to the console.",
    )


class UserPatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"role": "admin"}, {"full_name": "Rita Rep", "disabled": True}
        )
    )

    full_name: str | None = Field(None, max_length=200)
    role: UserRole | None = None
    password: str | None = Field(None, min_length=MIN_PASSWORD_LENGTH, max_length=200)
    disabled: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.USER_ID,
                "email": ex.AGENT_EMAIL,
                "full_name": "Rita Rep",
                "role": "agent",
                "created_at": ex.CREATED,
                "disabled_at": None,
                "last_login_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    email: str
    full_name: str | None
    role: UserRole
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None


_COMPANY = "id, name, is_default, timezone, settings, created_at"
_KEY = "id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"
_USER = "id, email, full_name, role, created_at, disabled_at, last_login_at"


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    company_id: uuid.UUID,
    name: str,
    role: Role,
    caller: Principal,
) -> NewKeyOut:
    key, row = await insert_key(conn, company_id, name, role, caller.actor)
    return NewKeyOut(**{k: row[k] for k in NewKeyOut.model_fields if k != "key"}, key=key)


async def _company(conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID) -> CompanyOut:
    row = await conn.fetchrow(f"SELECT {_COMPANY} FROM companies WHERE id = $1", company_id)
    if row is None:
        raise not_found("company", company_id)
    return CompanyOut(**dict(row))


@router.post("/companies", response_model=NewCompanyOut, status_code=201)
async def create_company(body: CompanyIn, ingest: IngestDep, caller: OperatorDep) -> NewCompanyOut:
    """Create a company with the default pipeline and its first admin key (shown once)."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO companies (name, timezone, settings) VALUES ($1, $2, $3)"
            f" RETURNING {_COMPANY}",
            body.name,
            body.timezone,
            body.settings,
        )
        await create_pipeline(conn, row["id"], "Sales", DEFAULT_STAGES, default=True)
        await conn.execute("INSERT INTO ai_models (company_id) VALUES ($1)", row["id"])
        await audit(conn, caller, row["id"], "company.created", {"name": body.name})
        key = await create_key(conn, row["id"], "first admin key", "admin", caller)
    return NewCompanyOut(company=CompanyOut(**dict(row)), admin_key=key)


async def create_pipeline(
    conn: asyncpg.Connection, company_id: uuid.UUID, name: str, stages: list[str], *, default: bool
) -> uuid.UUID:
    pipeline_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO pipelines (company_id, name, is_default) VALUES ($1, $2, $3) RETURNING id",
        company_id,
        name,
        default,
    )
    await conn.execute(
        "INSERT INTO stages (pipeline_id, name, position)"
        " SELECT $1, s.name, s.pos FROM unnest($2::text[]) WITH ORDINALITY AS s(name, pos)",
        pipeline_id,
        stages,
    )
    return pipeline_id


@router.get("/companies", response_model=list[CompanyOut], responses=ex.listed(CompanyOut))
async def list_companies(ingest: IngestDep, _: OperatorDep) -> list[CompanyOut]:
    rows = await ingest.plat.pool.fetch(f"SELECT {_COMPANY} FROM companies ORDER BY created_at")
    return [CompanyOut(**dict(r)) for r in rows]


@router.get("/companies/{company_id}", response_model=CompanyOut)
async def get_company(company_id: CompanyId, ingest: IngestDep, _: OperatorDep) -> CompanyOut:
    return await _company(ingest.plat.pool, company_id)


async def _patch_company(
    conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID, body: CompanyPatch
) -> CompanyOut:
    row = await conn.fetchrow(
        "UPDATE companies SET name = coalesce($2, name), timezone = coalesce($3, timezone),"
        " settings = jsonb_strip_nulls(settings || coalesce($4, '{}'::jsonb)), updated_at = now()"
        f" WHERE id = $1 RETURNING {_COMPANY}",
        company_id,
        body.name,
        body.timezone,
        body.settings,
    )
    if row is None:
        raise not_found("company", company_id)
    return CompanyOut(**dict(row))


@router.patch("/companies/{company_id}", response_model=CompanyOut)
async def patch_company(
    company_id: CompanyId, body: CompanyPatch, ingest: IngestDep, caller: OperatorDep
) -> CompanyOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        out = await _patch_company(conn, company_id, body)
        await audit(conn, caller, company_id, "company.updated", body.model_dump(exclude_none=True))
    return out


@router.post("/companies/{company_id}/api-keys", response_model=NewKeyOut, status_code=201)
async def operator_key(
    company_id: CompanyId, body: KeyIn, ingest: IngestDep, caller: OperatorDep
) -> NewKeyOut:
    """A key for a company from the operator (e.g. a new admin key when all were revoked)."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        await _company(conn, company_id)
        return await create_key(conn, company_id, body.name, body.role, caller)


@router.get("/company", response_model=CompanyOut)
async def my_company(company_id: AnyCompany, ingest: IngestDep) -> CompanyOut:
    """The company of the calling key."""
    return await _company(ingest.plat.pool, company_id)


@router.patch("/company", response_model=CompanyOut)
async def patch_my_company(
    body: CompanyPatch, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> CompanyOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        out = await _patch_company(conn, company_id, body)
        await audit(conn, caller, company_id, "company.updated", body.model_dump(exclude_none=True))
    return out


@router.get("/api-keys", response_model=list[KeyOut], responses=ex.listed(KeyOut))
async def list_keys(company_id: AdminCompany, ingest: IngestDep) -> list[KeyOut]:
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_KEY} FROM api_keys WHERE company_id = $1 ORDER BY created_at", company_id
    )
    return [KeyOut(**dict(r)) for r in rows]


@router.post("/api-keys", response_model=NewKeyOut, status_code=201)
async def add_key(
    body: KeyIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> NewKeyOut:
    """A new key for this company; the response holds the key, which is never shown again."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        return await create_key(conn, company_id, body.name, body.role, caller)


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_key(
    key_id: ApiKeyId, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> Response:
    """Revoke a key (within KEY_CACHE_SECONDS on every replica; at once on this one)."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        prefix = await conn.fetchval(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE id = $1 AND company_id = $2 RETURNING prefix",
            key_id,
            company_id,
        )
        if prefix is None:
            raise not_found("API key", key_id)
        await audit(conn, caller, company_id, "api_key.revoked", {"key": prefix})
    ingest.auth.forget()
    return Response(status_code=204)


@router.get("/users", response_model=list[UserOut], responses=ex.listed(UserOut))
async def list_users(company_id: AdminCompany, ingest: IngestDep) -> list[UserOut]:
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_USER} FROM users WHERE company_id = $1 ORDER BY created_at", company_id
    )
    return [UserOut(**dict(r)) for r in rows]


@router.post("/users", response_model=UserOut, status_code=201)
async def add_user(
    body: UserIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> UserOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"INSERT INTO users (company_id, email, full_name, role, password_hash)"
                f" VALUES ($1, lower($2), $3, $4, $5) RETURNING {_USER}",
                company_id,
                body.email,
                body.full_name,
                body.role,
                hash_password(body.password) if body.password else None,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"a user with email {body.email} exists") from None
        await audit(conn, caller, company_id, "user.created", {"user": str(row["id"])})
    return UserOut(**dict(row))


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: UserId, company_id: AdminCompany, ingest: IngestDep) -> UserOut:
    row = await ingest.plat.pool.fetchrow(
        f"SELECT {_USER} FROM users WHERE id = $1 AND company_id = $2", user_id, company_id
    )
    if row is None:
        raise not_found("user", user_id)
    return UserOut(**dict(row))


@router.patch("/users/{user_id}", response_model=UserOut)
async def patch_user(
    user_id: UserId,
    body: UserPatch,
    company_id: AdminCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
) -> UserOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE users SET full_name = coalesce($3, full_name), role = coalesce($4, role),"
            " password_hash = coalesce($5, password_hash),"
            " disabled_at = CASE WHEN $6::boolean IS NULL THEN disabled_at"
            "   WHEN $6 THEN coalesce(disabled_at, now()) ELSE NULL END"
            f" WHERE id = $1 AND company_id = $2 RETURNING {_USER}",
            user_id,
            company_id,
            body.full_name,
            body.role,
            hash_password(body.password) if body.password else None,
            body.disabled,
        )
        if row is None:
            raise not_found("user", user_id)
        if body.disabled or body.password:
            # A disabled user, or one whose password changed, is signed out everywhere.
            await conn.execute(
                "UPDATE console_sessions SET revoked_at = now() WHERE user_id = $1"
                " AND revoked_at IS NULL",
                user_id,
            )
        changed = sorted(body.model_dump(exclude_none=True))
        await audit(
            conn, caller, company_id, "user.updated", {"user": str(user_id), "fields": changed}
        )
    ingest.auth.forget()  # a new role or a sign-out counts at once here
    return UserOut(**dict(row))


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(
    user_id: UserId, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> Response:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        gone = await conn.fetchval(
            "DELETE FROM users WHERE id = $1 AND company_id = $2 RETURNING id", user_id, company_id
        )
        if gone is None:
            raise not_found("user", user_id)
        await audit(conn, caller, company_id, "user.deleted", {"user": str(user_id)})
    ingest.auth.forget()
    return Response(status_code=204)
