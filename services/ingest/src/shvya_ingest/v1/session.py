"""Console sign-in: a user of one company trades email and password for a session cookie.

    POST   /v1/session    {email, password, company_id?} → the session (and its cookie)
    GET    /v1/session    the signed-in user, company and CSRF token
    DELETE /v1/session    sign out (needs X-CSRF-Token)

The cookie `shvya_session` holds 32 random bytes (only their SHA-256 is stored, in
`console_sessions`), and is `HttpOnly` (no script reads it), `Secure` (https, or a loopback
http address, where browsers allow it) and `SameSite=Strict` (never sent by another site's
request). Every /v1 route accepts it as a credential (`auth.principal`), and unsafe methods need
the CSRF token too. Wrong emails and wrong passwords get the same answer in the same time;
sign-in attempts are limited per email and per client address (SIGNIN_RATE_LIMIT).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.apikeys import hash_key
from shvya_common.passwords import check_password, dummy_hash
from shvya_ingest import examples as ex
from shvya_ingest.api import Ingest
from shvya_ingest.auth import (
    SESSION_COOKIE,
    AuthError,
    Principal,
    audit,
    csrf_token,
    session_principal,
)
from shvya_ingest.ratelimit import Limited
from shvya_ingest.v1.common import ERRORS, IngestDep

router = APIRouter(prefix="/v1", tags=["console session"], responses=ERRORS)

# Users with one email in several companies: at most this many are tried per sign-in.
MAX_ACCOUNTS_PER_EMAIL = 10


class SignIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "admin@shvya.local", "password": "the password from .env"}]
        }
    )

    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=200)
    company_id: uuid.UUID | None = Field(
        None, description="Only when the email signs in to several companies."
    )


class SessionUser(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"id": ex.USER_ID, "email": ex.AGENT_EMAIL, "full_name": "Rita Rep", "role": "agent"}
        )
    )

    id: uuid.UUID
    email: str
    full_name: str | None
    role: Literal["admin", "agent", "viewer"]


class SessionCompany(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"id": ex.COMPANY_ID, "name": "Acme Solar", "timezone": ex.TIMEZONE}
        )
    )

    id: uuid.UUID
    name: str
    timezone: str


class SessionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "user": ex.example_of(SessionUser),
                "company": ex.example_of(SessionCompany),
                "csrf_token": "EXAMPLE-csrf-token-0000000000",
                "expires_at": ex.LATER,
            }
        )
    )

    user: SessionUser
    company: SessionCompany
    csrf_token: str = Field(description="Send as X-CSRF-Token with every unsafe request.")
    expires_at: datetime


def same_origin(request: Request) -> bool:
    """A browser's Origin, when sent, names this host (a login form on another site is
    refused: login CSRF)."""
    origin = request.headers.get("origin")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _cookie(response: Response, ingest: Ingest, token: str, expires: datetime | None) -> None:
    if expires is None:
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            secure=ingest.settings.console_cookie_secure,
            httponly=True,
            samesite="strict",
        )
        return
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ingest.settings.console_session_hours * 3600),
        path="/",
        secure=ingest.settings.console_cookie_secure,
        httponly=True,
        samesite="strict",
    )


async def _out(ingest: Ingest, session_id: uuid.UUID, token: str) -> SessionOut:
    row = await ingest.plat.pool.fetchrow(
        "SELECT s.expires_at, u.id, u.email, u.full_name, u.role, c.id AS company_id,"
        " c.name AS company_name, c.timezone FROM console_sessions s"
        " JOIN users u ON u.id = s.user_id JOIN companies c ON c.id = s.company_id"
        " WHERE s.id = $1",
        session_id,
    )
    if row is None:
        raise AuthError(401, "the session has expired or was signed out; sign in again").http()
    return SessionOut(
        user=SessionUser(
            id=row["id"], email=row["email"], full_name=row["full_name"], role=row["role"]
        ),
        company=SessionCompany(
            id=row["company_id"], name=row["company_name"], timezone=row["timezone"]
        ),
        csrf_token=csrf_token(token),
        expires_at=row["expires_at"],
    )


async def _matching(ingest: Ingest, body: SignIn) -> list[Any]:
    rows = await ingest.plat.pool.fetch(
        "SELECT u.id, u.company_id, u.email, u.role, u.password_hash, c.name AS company_name"
        " FROM users u JOIN companies c ON c.id = u.company_id"
        " WHERE lower(u.email) = lower($1) AND u.disabled_at IS NULL"
        " AND u.password_hash IS NOT NULL AND ($2::uuid IS NULL OR u.company_id = $2)"
        " ORDER BY u.created_at LIMIT $3",
        body.email.strip(),
        body.company_id,
        MAX_ACCOUNTS_PER_EMAIL,
    )
    if not rows:
        # The same work as a wrong password, so timing does not tell which emails exist.
        await asyncio.to_thread(check_password, body.password, dummy_hash())
        return []
    found = []
    for row in rows:
        if await asyncio.to_thread(check_password, body.password, row["password_hash"]):
            found.append(row)
    return found


@router.post("/session", response_model=SessionOut, status_code=201)
async def sign_in(
    body: SignIn, request: Request, response: Response, ingest: IngestDep
) -> SessionOut:
    """Sign in to the console; sets the HTTP-only session cookie and returns the CSRF token."""
    if not same_origin(request):
        raise HTTPException(403, "sign-in from another site's page is refused")
    client = request.client.host if request.client else "unknown"
    try:
        await ingest.signin_limiter.hit(email=body.email.strip().lower(), client=client)
    except Limited as err:
        raise HTTPException(
            429,
            "too many sign-in attempts; wait and try again",
            headers={"Retry-After": str(err.retry_after)},
        ) from err
    found = await _matching(ingest, body)
    if not found:
        raise AuthError(401, "wrong email or password").http()
    if len(found) > 1:
        raise HTTPException(
            409,
            {
                "message": "this email signs in to several companies: choose one (company_id)",
                "companies": [
                    {"id": str(r["company_id"]), "name": r["company_name"]} for r in found
                ],
            },
        )
    user = found[0]
    token = secrets.token_urlsafe(32)
    expires = datetime.now().astimezone() + timedelta(hours=ingest.settings.console_session_hours)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        session_id = await conn.fetchval(
            "INSERT INTO console_sessions (token_hash, user_id, company_id, expires_at,"
            " user_agent) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            hash_key(token),
            user["id"],
            user["company_id"],
            expires,
            (request.headers.get("user-agent") or "")[:300] or None,
        )
        await conn.execute("UPDATE users SET last_login_at = now() WHERE id = $1", user["id"])
        who = Principal("session", user["company_id"], user["role"], email=user["email"])
        await audit(conn, who, user["company_id"], "session.signed_in", {"user": str(user["id"])})
        # Expired sessions are dropped now and then, by the sign-ins that make new ones.
        await conn.execute(
            "DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'"
        )
    _cookie(response, ingest, token, expires)
    return await _out(ingest, session_id, token)


@router.get("/session", response_model=SessionOut)
async def current_session(request: Request, ingest: IngestDep) -> SessionOut:
    """The signed-in user of this browser (401 when none)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise AuthError(401, "not signed in").http()
    try:
        found = await session_principal(request, token)
    except AuthError as err:
        raise err.http() from err
    assert found.session_id is not None
    return await _out(ingest, found.session_id, token)


@router.delete("/session", status_code=204)
async def sign_out(request: Request, ingest: IngestDep) -> Response:
    """Sign out: the session ends at once on this ingest, within seconds on the others."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise AuthError(401, "not signed in").http()
    try:
        found = await session_principal(request, token, viewer_may_write=True)
    except AuthError as err:
        raise err.http() from err
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE console_sessions SET revoked_at = now() WHERE id = $1", found.session_id
        )
        await audit(
            conn, found, found.company_id, "session.signed_out", {"user": str(found.user_id)}
        )
    ingest.auth.forget()
    response = Response(status_code=204)
    _cookie(response, ingest, token, None)
    return response
