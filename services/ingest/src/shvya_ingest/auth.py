"""Who is calling: the platform operator, a company's API key with a role, or a console user
signed in with a session cookie.

    Authorization: Bearer <ADMIN_TOKEN>          the operator: creates companies and their first
                                                 key; platform-wide operations (DLQ replay)
    Authorization: Bearer shvya_<id>_<secret>    a company's key: `admin` (everything in its
                                                 company), `agent` (leads, conversations,
                                                 sends), `ingest` (posting inbound messages)
    Cookie: shvya_session=<token>                a console user of one company (`admin`,
      + X-CSRF-Token: <token> (unsafe methods)   `agent`, or `viewer`: an agent's reads only)

An `Authorization` header always wins over a cookie, so API keys behave exactly as without the
console. A session is accepted for unsafe methods (POST, PUT, PATCH, DELETE) only with the
session's CSRF token in `X-CSRF-Token` (an HMAC of the session token, see `sessions.py`): a
cross-site form or script can send the cookie but can neither read nor forge the token.

Every company-scoped route takes its company from the credential (`AdminCompany`,
`AgentCompany`, ...), never from the request, so an id from another company is simply not
found (404). A key is shown once at creation; only its SHA-256 is stored (32 random bytes need
no slow hash), with the visible prefix `shvya_<id>` to tell keys apart. Resolved keys are
cached for `KEY_CACHE_SECONDS`, so a revocation takes effect within that time on every replica.

One function, `authenticate`, reads the header for FastAPI routes and for the pure-ASGI fast
path alike, and `AuthError` carries the status, reason and headers both answer with.

The original's credential-less `POST /inbound-message` (and `GET /queue/stats`) keep working
only with `INBOUND_AUTH=anonymous-loopback` (the default) on a loopback bind; ingest refuses to
start with it on any other address.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, HTTPException, Request

from shvya_common.apikeys import hash_key, key_prefix, record_audit

Role = Literal["admin", "agent", "ingest"]
ROLES: tuple[Role, ...] = ("admin", "agent", "ingest")
# What a caller may be: a key's role, or a console user's (a viewer reads what an agent reads).
CallerRole = Literal["admin", "agent", "ingest", "viewer"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "shvya_session"
CSRF_HEADER = "x-csrf-token"
KEY_CACHE_SECONDS = 10.0
_KEY_CACHE_MAX = 10_000


class AuthError(Exception):
    """An answer to give instead of running the route: 401 or 403 with a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}

    def http(self) -> HTTPException:
        return HTTPException(self.status, self.reason, headers=self.headers)


@dataclass(frozen=True)
class Principal:
    """The caller. `company_id` is None only for the operator (and anonymous)."""

    kind: Literal["operator", "key", "anonymous", "session"]
    company_id: uuid.UUID | None
    role: CallerRole | None
    key_id: uuid.UUID | None = None
    prefix: str | None = None
    user_id: uuid.UUID | None = None
    email: str | None = None
    session_id: uuid.UUID | None = None

    @property
    def actor(self) -> str:
        """Who did it, for the audit trail."""
        if self.kind == "key":
            return f"key:{self.prefix}"
        if self.kind == "session":
            return f"user:{self.email}"
        return self.kind

    @property
    def rate_key(self) -> str:
        """What the per-caller rate limit counts: the key, the user, or the kind."""
        return str(self.key_id or self.user_id or self.kind)

    def allows(self, roles: Iterable[str]) -> bool:
        return self.kind in ("key", "session") and self.role in set(roles)


OPERATOR = Principal("operator", None, None)
ANONYMOUS = Principal("anonymous", None, None)


class Authenticator:
    """Resolves bearer credentials against the operator token and the api_keys table."""

    def __init__(self, pool: asyncpg.Pool, operator_token: str) -> None:
        self.pool = pool
        self._operator = operator_token.encode()
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        # Bumped by `forget`: open live streams re-check their credential when it moves.
        self.generation = 0

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an `Authorization` header value; None when there is none.
        Raises AuthError for a credential that is malformed, unknown or revoked."""
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(401, "use 'Authorization: Bearer <API key>'")
        prefix = key_prefix(credential)
        if prefix is None:
            if hmac.compare_digest(credential.encode(), self._operator):
                return OPERATOR
            raise AuthError(401, "the credential is not a valid API key or operator token")
        principal = await self._key(credential, prefix)
        if principal is None:
            raise AuthError(401, "API key unknown or revoked")
        return principal

    async def _key(self, key: str, prefix: str) -> Principal | None:
        digest = hash_key(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET last_used_at = now() WHERE prefix = $1 AND revoked_at IS NULL"
            " RETURNING id, company_id, role, key_hash",
            prefix,
        )
        principal = None
        if row is not None and hmac.compare_digest(row["key_hash"], digest):
            principal = Principal("key", row["company_id"], row["role"], row["id"], prefix)
        if len(self._cache) >= _KEY_CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + KEY_CACHE_SECONDS, principal)
        return principal

    async def session(self, token: str) -> Principal | None:
        """The console user of a session token; None when it is unknown, expired, revoked, or
        its user is disabled. Cached like keys, so a sign-out elsewhere counts within
        KEY_CACHE_SECONDS (at once in the process that signed out)."""
        digest = "s:" + hash_key(token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.pool.fetchrow(
            "UPDATE console_sessions s SET last_seen_at = now() FROM users u"
            " WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()"
            " AND u.id = s.user_id AND u.company_id = s.company_id AND u.disabled_at IS NULL"
            " RETURNING s.id, s.company_id, u.id AS user_id, u.email, u.role",
            hash_key(token),
        )
        principal = None
        if row is not None:
            principal = Principal(
                "session",
                row["company_id"],
                row["role"],
                user_id=row["user_id"],
                email=row["email"],
                session_id=row["id"],
            )
        if len(self._cache) >= _KEY_CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + KEY_CACHE_SECONDS, principal)
        return principal

    def forget(self) -> None:
        """Drop cached keys and sessions (a revocation made by this process takes effect at
        once here)."""
        self._cache.clear()
        self.generation += 1


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: an HMAC of the session token, so it needs no storage and
    cannot be derived without the cookie, which scripts cannot read (HttpOnly)."""
    return hmac.new(session_token.encode(), b"shvya-csrf", hashlib.sha256).hexdigest()


async def session_principal(
    request: Request, token: str, *, viewer_may_write: bool = False
) -> Principal:
    """The console user of this request's session cookie, with the CSRF and read-only checks
    (`viewer_may_write` only for signing out)."""
    found = await authenticator(request).session(token)
    if found is None:
        raise AuthError(401, "the session has expired or was signed out; sign in again")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token(token).encode()):
            raise AuthError(403, "missing or wrong X-CSRF-Token for this session")
        if found.role == "viewer" and not viewer_may_write:
            raise AuthError(403, "viewers have read-only access")
    return found


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.ingest.auth
    return auth


async def principal(request: Request) -> Principal:
    """The caller of this request; 401 without a credential. A bearer credential wins; without
    one, a console session cookie is used."""
    found: Principal | None
    try:
        found = await authenticator(request).authenticate(request.headers.get("authorization"))
        token = request.cookies.get(SESSION_COOKIE)
        if found is None and token:
            found = await session_principal(request, token)
    except AuthError as err:
        raise err.http() from err
    if found is None:
        raise AuthError(401, "this route needs 'Authorization: Bearer <API key>'").http()
    request.state.principal = found
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]


async def operator(caller: PrincipalDep) -> Principal:
    if caller.kind != "operator":
        raise AuthError(403, "only the platform operator (ADMIN_TOKEN) may do this").http()
    return caller


def company_of(*roles: Role) -> Callable[[Principal], Awaitable[uuid.UUID]]:
    """A dependency giving the caller's company, if its key (or its signed-in user) has one of
    `roles`. A viewer passes where an agent does; `principal` has already refused it any
    unsafe method."""
    allowed = set(roles)

    async def dependency(caller: PrincipalDep) -> uuid.UUID:
        if caller.kind == "operator":
            raise AuthError(
                403, "the operator token is not a company's key: use one of the company's keys"
            ).http()
        role = "agent" if caller.kind == "session" and caller.role == "viewer" else caller.role
        if role not in allowed or caller.company_id is None:
            raise AuthError(
                403, f"this route needs a key with role {' or '.join(sorted(allowed))}"
            ).http()
        return caller.company_id

    dependency.roles = frozenset(allowed)  # type: ignore[attr-defined]  # for the role tests
    return dependency


OperatorDep = Annotated[Principal, Depends(operator)]
AdminCompany = Annotated[uuid.UUID, Depends(company_of("admin"))]
AgentCompany = Annotated[uuid.UUID, Depends(company_of("admin", "agent"))]


async def audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    caller: Principal,
    company_id: uuid.UUID | None,
    action: str,
    target: dict[str, Any],
) -> None:
    """Record an admin action: who (the key's prefix or the operator), what, when."""
    await record_audit(conn, company_id, caller.actor, action, target)
