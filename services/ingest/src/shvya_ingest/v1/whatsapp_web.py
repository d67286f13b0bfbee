"""A company's WhatsApp Web channel account: its link state, health and login codes, for the
company's admin (the console's Channels page).

    GET  /v1/channel-accounts/{id}/whatsapp-web          link state, health, pause, pairing code
    GET  /v1/channel-accounts/{id}/whatsapp-web/qr.png   the QR code to scan (image/png)
    POST /v1/channel-accounts/{id}/whatsapp-web/link     ask the dispatch replica to link it

The account's browser profile is `ca-<account id>` (`channel_accounts.web_profile`), never a name
the company chose, so no company reaches another's linked WhatsApp. The dispatch replica that
holds the account's lease (`whatsapp_web_accounts`) serves a login requested here or by
`python -m shvya_dispatch whatsapp-web-login`, and stores each QR code, pairing code and outcome
in `whatsapp_web_logins`, which these routes read: no process needs the dispatch machine's files.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shvya_common.channel_accounts import web_profile
from shvya_common.whatsapp import web_accounts as db
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, PrincipalDep, audit
from shvya_ingest.v1.common import ERRORS, V1, AccountId, IngestDep, not_found

router = APIRouter(prefix="/v1", dependencies=V1, tags=["channel accounts"], responses=ERRORS)

PNG = {200: {"content": {"image/png": {}}, "description": "The QR code."}}
# How long a login asked for here stays on offer to the replica (it links within
# WHATSAPP_WEB_LOGIN_TIMEOUT_SECONDS once it starts).
LINK_REQUEST_SECONDS = 300.0


class WebLoginOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "account_id": ex.ACCOUNT_ID,
                "account": f"ca-{ex.ACCOUNT_ID}",
                "status": "waiting",
                "method": "code",
                "qr": False,
                "pairing_code": "K7QP-2XMD",
                "detail": None,
                "updated_at": ex.UPDATED,
                "driven": True,
                "health": "unpaired",
                "paused": False,
                "pause_reason": None,
                "login_command": f".venv/bin/shvya whatsapp-web login --account ca-{ex.ACCOUNT_ID}",
            }
        )
    )

    account_id: uuid.UUID
    account: str = Field(description="The browser profile of the account (`ca-<account id>`).")
    status: Literal["not_started", "waiting", "linked", "timed_out", "failed"]
    method: Literal["qr", "code"] | None = Field(description="How the current login links.")
    qr: bool = Field(description="A QR code is waiting to be scanned (see qr.png).")
    pairing_code: str | None = Field(
        description="The code to type on the phone (Linked devices > Link with phone number)."
    )
    detail: str | None
    updated_at: datetime | None
    driven: bool = Field(description="A dispatch replica holds the account and can link it.")
    health: str | None = Field(description="The account's last probed state (e.g. connected).")
    paused: bool
    pause_reason: str | None
    login_command: str = Field(description="The command that links it from a shell.")


class LinkIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"method": "qr"}, {"method": "code", "phone": ex.PHONE})
    )

    method: Literal["qr", "code"] = "qr"
    phone: str | None = Field(None, description="+E.164, for a pairing code (method code).")

    @model_validator(mode="after")
    def _phone_for_code(self) -> LinkIn:
        if self.method == "code":
            digits = "".join(c for c in (self.phone or "") if c.isdigit())
            if not 8 <= len(digits) <= 15:
                raise ValueError("a pairing code needs the phone's number (+E.164)")
        return self


async def _profile(ingest: IngestDep, company_id: uuid.UUID, account_id: uuid.UUID) -> str:
    found = await ingest.plat.pool.fetchval(
        "SELECT true FROM channel_accounts WHERE id = $1 AND company_id = $2"
        " AND channel = 'whatsapp_web'",
        account_id,
        company_id,
    )
    if not found:
        raise not_found("WhatsApp Web channel account", account_id)
    return web_profile(account_id)


async def _state(ingest: IngestDep, account_id: uuid.UUID, profile: str) -> WebLoginOut:
    pool = ingest.plat.pool
    login: dict[str, Any] = await db.read_login(pool, profile) or {}
    row = await db.read_account(pool, profile)
    return WebLoginOut(
        account_id=account_id,
        account=profile,
        status=login.get("status") or "not_started",
        method=login.get("method"),
        qr=bool(login.get("qr_png")),
        pairing_code=login.get("pairing_code"),
        detail=login.get("detail"),
        updated_at=login.get("updated_at"),
        driven=bool(row and row.lease_live and row.owner),
        health=row.state if row else None,
        paused=bool(row and row.pause_in_force),
        pause_reason=row.pause_reason if row and row.pause_in_force else None,
        login_command=f".venv/bin/shvya whatsapp-web login --account {profile}",
    )


@router.get("/channel-accounts/{account_id}/whatsapp-web", response_model=WebLoginOut)
async def web_login(
    account_id: AccountId, company_id: AdminCompany, ingest: IngestDep
) -> WebLoginOut:
    return await _state(ingest, account_id, await _profile(ingest, company_id, account_id))


@router.post(
    "/channel-accounts/{account_id}/whatsapp-web/link", response_model=WebLoginOut, status_code=202
)
async def request_link(
    account_id: AccountId,
    company_id: AdminCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
    body: LinkIn | None = None,
) -> WebLoginOut:
    """Ask the dispatch replica that drives the account to link it; its QR code (or pairing
    code) then appears in GET .../whatsapp-web. 409 when no replica drives the account (is
    dispatch running with WHATSAPP_WEB_ENABLED?): run the login command instead."""
    body = body or LinkIn()
    profile = await _profile(ingest, company_id, account_id)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await db.read_account(conn, profile)
        if row is None or not (row.lease_live and row.owner):
            raise HTTPException(
                409,
                "no dispatch replica drives this account yet (WHATSAPP_WEB_ENABLED on dispatch);"
                f" link it from a shell: .venv/bin/shvya whatsapp-web login"
                f" --account {profile}",
            )
        await db.request_login(conn, profile, body.method, body.phone, LINK_REQUEST_SECONDS)
        await audit(
            conn, caller, company_id, "whatsapp_web.link_requested", {"method": body.method}
        )
    return await _state(ingest, account_id, profile)


@router.get(
    "/channel-accounts/{account_id}/whatsapp-web/qr.png",
    response_class=Response,
    responses=PNG,  # type: ignore[arg-type]
)
async def web_login_qr(
    account_id: AccountId, company_id: AdminCompany, ingest: IngestDep
) -> Response:
    """The current QR code; 404 when none is waiting (not started, linked or expired)."""
    profile = await _profile(ingest, company_id, account_id)
    login = await db.read_login(ingest.plat.pool, profile)
    if login is None or not login.get("qr_png"):
        raise HTTPException(404, "no QR code is waiting for this account")
    return Response(
        bytes(login["qr_png"]), media_type="image/png", headers={"Cache-Control": "no-store"}
    )
