"""Ingest's HTTP routes: the original's /inbound-message, /queue/stats and /admin/dlq/replay,
plus health and readiness.

`POST /inbound-message` files into the company of the caller's `ingest` or `admin` key (see
`auth.py`); without a credential only when INBOUND_AUTH allows it (loopback, default company).
`/admin/*` and `/queue/stats` are the platform operator's (ADMIN_TOKEN).

Bad input gets a 4xx with a reason and writes nothing. A database outage gets 503 (nothing was
filed); a NATS outage does not: the message and its job are committed, and the job bus's relay
publishes the job once NATS is back.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Annotated, Any, Literal

import asyncpg
import nats.errors
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.db import is_outage
from shvya_common.runtime import Platform
from shvya_common.storage import MediaStore, media_store
from shvya_ingest import examples as ex
from shvya_ingest.auth import ANONYMOUS, Authenticator, AuthError, Principal
from shvya_ingest.batching import FilingBatcher
from shvya_ingest.inbound import InboundFiler
from shvya_ingest.live import LiveHub
from shvya_ingest.phone import AddressError, normalise_email, normalise_phone
from shvya_ingest.ratelimit import Limited, PostgresStorage, RateLimiter
from shvya_ingest.repository import CompanyRoute, InboundRow, IngestRepository
from shvya_ingest.settings import IngestSettings
from shvya_ingest.whatsapp_accounts import Owners

log = structlog.get_logger(__name__)

# Failures of a dependency, not of the request: answered 503 so the sender retries.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection killed under an operation leaves the client in a state it reports this way.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    nats.errors.Error,
    ConnectionError,
    OSError,
    TimeoutError,
)


class InboundMessage(BaseModel):
    """The original request, plus an optional sender-side id that makes retries idempotent."""

    model_config = ConfigDict(
        str_strip_whitespace=True,
        json_schema_extra=ex.examples(
            {
                "phone_number": ex.PHONE,
                "contact_name": ex.CONTACT,
                "message_text": "Hi! How much is a 6 kW system?",
                "channel": "whatsapp_cloud",
                "provider_message_id": "wamid.HBgLMTQxNTU1NTAxMjMVAgASGBQzQTRFQjc3",
            }
        ),
    )

    phone_number: str = Field(
        min_length=1, max_length=254, description="E.164 number, or an email address for email."
    )
    contact_name: str | None = Field(None, max_length=200)
    message_text: str = Field(min_length=1, max_length=16_384)
    channel: Literal["whatsapp_cloud", "whatsapp_web", "email", "log"]
    company_id: uuid.UUID | None = None
    provider_message_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The sender's id for this message; a retry with the same id is not filed "
        "twice and gets the same message_id and job_id back.",
    )


class InboundAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"status": "ok", "message_id": ex.MESSAGE_ID, "job_id": ex.JOB_ID}
        )
    )

    status: Literal["ok"] = "ok"
    message_id: uuid.UUID
    # The message's ai.engage job; for an opt-out keyword (STOP, ...), which gets no ai.engage,
    # the job that sends its one confirmation (a dispatch.send, whose id is its message's id).
    job_id: uuid.UUID


class QueueStatsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "queued": 4,
                "processing": 2,
                "completed": 18230,
                "failed": 1,
                "dlq": 0,
                "total": 18237,
                "orphaned": 0,
                "sends": {"sent": 9120, "logged": 40, "held": 2, "unknown": 1},
            }
        )
    )

    queued: int
    processing: int
    completed: int
    failed: int
    dlq: int
    total: int
    orphaned: int = Field(description="Messages that named no row; kept for inspection only.")
    sends: dict[str, int] = Field(
        description="Outbound sends by status (sent, logged, unknown, held, dlq, ...)."
    )


class ReplayRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"max_jobs": 50, "kind": "sends", "dry_run": True})
    )

    max_jobs: int = Field(10, ge=1, le=1000)
    kind: Literal["all", "jobs", "sends"] = Field(
        "all", description="Dead-lettered jobs, sends (dispatch.send), or both."
    )
    ids: list[uuid.UUID] | None = Field(
        None, max_length=1000, description="Only these dead letters (job or message ids)."
    )
    task: str | None = Field(None, max_length=100, description="Only dead letters of this task.")
    dry_run: bool = Field(False, description="List what would be replayed; change nothing.")


class ReplayResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "replayed": 2,
                "job_ids": [ex.JOB_ID, ex.MESSAGE_ID],
                "jobs": 1,
                "sends": 1,
                "dry_run": False,
            }
        )
    )

    replayed: int
    job_ids: list[uuid.UUID]
    jobs: int
    sends: int
    dry_run: bool


class Ingest:
    """The state behind the routes: the platform, the repository and a route cache."""

    def __init__(self, settings: IngestSettings, plat: Platform) -> None:
        self.settings = settings
        self.plat = plat
        self.repo = IngestRepository(plat.pool)
        self.routes: dict[uuid.UUID, CompanyRoute] = {}
        self.default_company_id: uuid.UUID | None = None
        self.inbound = InboundFiler(settings, plat, self.repo)
        self.batcher = FilingBatcher(self.inbound)
        self.auth = Authenticator(plat.pool, settings.admin_token.get_secret_value())
        # Who owns each WhatsApp business number, and the app secret that signs its webhooks.
        self.whatsapp_owners = Owners(settings, plat.pool)
        self.limiter = RateLimiter(
            PostgresStorage(plat.pool),
            key=settings.api_rate_limit,
            sender=settings.inbound_rate_limit,
        )
        # Console sign-ins: per email, and six times that per client address.
        self.signin_limiter = RateLimiter(
            PostgresStorage(plat.pool),
            email=settings.signin_rate_limit,
            client=re.sub(r"^\d+", lambda m: str(int(m.group()) * 6), settings.signin_rate_limit),
        )
        self.live = LiveHub(plat.nc, plat.topology)
        # The media store (email attachments, downloads, erasure); the lifespan closes it.
        self.media: MediaStore = media_store(settings)

    async def caller(self, authorization: str | None) -> Principal:
        """The principal for an inbound request: a key, or anonymous where INBOUND_AUTH allows;
        the caller of any other route goes through `auth.principal`."""
        found = await self.auth.authenticate(authorization)
        if found is not None:
            return found
        if self.settings.inbound_auth == "required":
            raise AuthError(
                401, "POST /inbound-message needs 'Authorization: Bearer <ingest or admin key>'"
            )
        return ANONYMOUS

    async def route_for(self, company_id: uuid.UUID | None) -> CompanyRoute:
        if company_id is None:
            if self.default_company_id is None:
                self.default_company_id = await self.repo.ensure_default_company(
                    self.settings.default_company_name
                )
            company_id = self.default_company_id
        route = self.routes.get(company_id)
        if route is None:
            route = await self.repo.ensure_company_route(company_id)
            if route is None:
                raise HTTPException(404, f"company_id {company_id} does not exist")
            self.routes[company_id] = route
        return route

    def company_for(self, caller: Principal, body: InboundMessage) -> uuid.UUID | None:
        """The company a message files into: the key's; the default one for anonymous."""
        if caller.kind == "anonymous":
            if body.company_id is not None:
                raise AuthError(401, "a company_id needs that company's ingest or admin key")
            return None
        if caller.kind == "operator" or caller.role not in ("ingest", "admin"):
            raise AuthError(403, "posting inbound messages needs a company's ingest or admin key")
        if body.company_id is not None and body.company_id != caller.company_id:
            raise AuthError(403, "company_id is not the company of this key")
        return caller.company_id

    async def limit(self, **identities: str) -> None:
        """Count a request against the limits of `identities` (key, sender); over one: 429 with
        Retry-After (a provider retries)."""
        try:
            await self.limiter.hit(**identities)
        except Limited as err:
            raise HTTPException(
                429, str(err), headers={"Retry-After": str(err.retry_after)}
            ) from err

    async def limit_sender(self, company_id: uuid.UUID | None, address: str) -> None:
        """INBOUND_RATE_LIMIT per sender, at every HTTP door that files messages."""
        await self.limit(sender=f"{company_id or 'routed'}:{address.strip().lower()}")

    async def accept(self, body: InboundMessage, caller: Principal) -> InboundAccepted:
        company_id = self.company_for(caller, body)
        try:
            if body.channel == "email" or "@" in body.phone_number:
                identity: Literal["phone", "email"] = "email"
                address = normalise_email(body.phone_number)
            else:
                identity = "phone"
                address = normalise_phone(body.phone_number, self.settings.default_phone_region)
        except AddressError as err:
            raise HTTPException(422, str(err)) from err
        await self.limit(key=str(caller.key_id or "anonymous"), sender=f"{company_id}:{address}")
        route = await self.route_for(company_id)
        row = InboundRow(
            address=address,
            text=body.message_text,
            contact_name=body.contact_name,
            provider_message_id=body.provider_message_id,
        )
        filed = await self.batcher.file_one(route, identity, body.channel, row)
        if filed.job_id is None:
            raise HTTPException(409, "message already filed but its job is missing")
        return InboundAccepted(message_id=filed.message_id, job_id=filed.job_id)


async def get_ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


IngestDep = Annotated[Ingest, Depends(get_ingest)]


async def require_operator(request: Request) -> Principal:
    """The platform operator (ADMIN_TOKEN) only."""
    ingest: Ingest = request.app.state.ingest
    try:
        found = await ingest.auth.authenticate(request.headers.get("authorization"))
    except AuthError as err:
        raise err.http() from err
    if found is None:
        raise AuthError(401, "this route needs 'Authorization: Bearer <ADMIN_TOKEN>'").http()
    if found.kind != "operator":
        raise AuthError(403, "only the platform operator (ADMIN_TOKEN) may do this").http()
    return found


async def stats_reader(request: Request) -> None:
    """Queue statistics are platform-wide: the operator's, or anyone's on the loopback default
    (the original's testing workflow reads them without a credential)."""
    ingest: Ingest = request.app.state.ingest
    if request.headers.get("authorization") or ingest.settings.inbound_auth == "required":
        await require_operator(request)


router = APIRouter()
admin = APIRouter(prefix="/admin", dependencies=[Depends(require_operator)], tags=["admin"])


@router.post("/inbound-message", response_model=InboundAccepted, tags=["inbound"])
async def inbound_message(body: InboundMessage, ingest: IngestDep, request: Request) -> Response:
    """File an inbound message in the company of the caller's ingest or admin key and enqueue
    `ai.engage` at priority 100 (an opt-out keyword instead suppresses the sender and queues
    one confirmation)."""
    try:
        caller = await ingest.caller(request.headers.get("authorization"))
    except AuthError as err:
        raise err.http() from err
    try:
        accepted = await ingest.accept(body, caller)
    except AuthError as err:
        raise err.http() from err
    # The hot path: serialised once here instead of re-validated against response_model.
    return Response(accepted.model_dump_json(), media_type="application/json")


@router.get(
    "/queue/stats",
    response_model=QueueStatsOut,
    tags=["queue"],
    dependencies=[Depends(stats_reader)],
)
async def queue_stats(ingest: IngestDep) -> QueueStatsOut:
    stats = await ingest.plat.bus.queue_stats()
    return QueueStatsOut(**stats.__dict__)


@admin.post("/dlq/replay", response_model=ReplayResult)
async def replay_dlq(ingest: IngestDep, body: ReplayRequest | None = None) -> ReplayResult:
    """Put up to `max_jobs` dead letters (jobs and sends, oldest first) back on the queue,
    attempts reset. Sends recorded `unknown` and orphaned messages are never replayed."""
    req = body or ReplayRequest()
    done = await ingest.plat.bus.replay(
        req.max_jobs, kind=req.kind, ids=req.ids, task=req.task, dry_run=req.dry_run
    )
    return ReplayResult(
        replayed=0 if done.dry_run else len(done.ids),
        job_ids=done.ids,
        jobs=done.jobs,
        sends=done.sends,
        dry_run=done.dry_run,
    )


HEALTHY = ex.answer({"status": "ok"})
READY = {
    **ex.answer(
        {"status": "ready", "database": "ok", "nats": "ok"},
        description="PostgreSQL answers (while NATS is away, messages are published later).",
    ),
    **ex.answer(
        {"status": "unavailable", "database": "unavailable: ConnectionRefusedError", "nats": "ok"},
        status=503,
        description="PostgreSQL does not answer.",
    ),
}


@router.get("/healthz", tags=["ops"], responses=HEALTHY)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses=READY)
async def readyz(ingest: IngestDep) -> JSONResponse:
    """Ready when PostgreSQL answers (ingest can file messages). NATS is reported too: while it
    is away, accepted messages wait in PostgreSQL and the relay publishes them later."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(ingest.plat.pool.fetchval("SELECT 1"), 2)
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"unavailable: {type(err).__name__}"
    try:
        await asyncio.wait_for(ingest.plat.js.account_info(), 2)
        checks["nats"] = "ok"
    except Exception as err:
        checks["nats"] = f"unavailable: {type(err).__name__}"
    ready = checks["database"] == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )


UNAVAILABLE = {"detail": "a dependency (database or queue) is unavailable; retry later"}


def unavailable_body(exc: BaseException) -> bytes:
    """The 503 body, logging which dependency failed (by type, never by message)."""
    log.warning("dependency_unavailable", error=type(exc).__name__)
    return json.dumps(UNAVAILABLE).encode()


INTERNAL = {"detail": "internal error; it has been logged"}


def refused_by_database(exc: asyncpg.PostgresError) -> tuple[int, str] | None:
    """A value the database will not store (a NUL character, a number out of range: SQLSTATE
    class 22) or a duplicate (23505): the request's fault, answered 4xx, never 500."""
    state = getattr(exc, "sqlstate", "") or ""
    if state.startswith("22"):
        return 422, f"a value cannot be stored: {type(exc).__name__}"
    if state == "23505":
        return 409, "conflicts with an existing item"
    return None


def internal_error(exc: BaseException) -> Response:
    """A bug, answered as JSON (the same body from the fast path and the routes)."""
    log.error("internal_error", error=type(exc).__name__, exc_info=exc)
    return JSONResponse(INTERNAL, status_code=500)


def _unavailable(exc: BaseException) -> Response:
    return Response(unavailable_body(exc), 503, {"Retry-After": "5"}, "application/json")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[dict[str, Any]] = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return internal_error(exc)

    @app.exception_handler(asyncpg.PostgresError)
    async def _postgres(_: Request, exc: asyncpg.PostgresError) -> Response:
        if is_outage(exc):
            return _unavailable(exc)
        refused = refused_by_database(exc)
        if refused is not None:
            return JSONResponse({"detail": refused[1]}, status_code=refused[0])
        return internal_error(exc)

    for error in OUTAGE_ERRORS:

        @app.exception_handler(error)
        async def _outage(_: Request, exc: Exception) -> Response:
            return _unavailable(exc)
