"""A WhatsApp Web channel account's link state and QR code, for the company's admin.

    GET /v1/channel-accounts/{id}/whatsapp-web          {account, status, qr, detail, updated_at}
    GET /v1/channel-accounts/{id}/whatsapp-web/qr.png   the QR code to scan (image/png)

The login flow (`python -m shvya_dispatch whatsapp-web-login --account NAME`, wherever it runs)
stores each new QR code and the outcome in `whatsapp_web_logins`; these routes serve the row of
the profile that the company's own `whatsapp_web` account names (`config.account`), so no
company sees another's QR and no process needs the dispatch machine's files.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from shvya_common.whatsapp.web_logins import WebLogin, read_login
from shvya_ingest.auth import AdminCompany
from shvya_ingest.v1.common import ERRORS, V1, IngestDep, not_found

router = APIRouter(prefix="/v1", dependencies=V1, tags=["channel accounts"], responses=ERRORS)

PNG = {200: {"content": {"image/png": {}}, "description": "The QR code."}}


class WebLoginOut(BaseModel):
    account_id: uuid.UUID
    account: str = Field(description="The browser profile the account names.")
    status: Literal["not_started", "waiting", "linked", "timed_out", "failed"]
    qr: bool = Field(description="A QR code is waiting to be scanned (see qr.png).")
    detail: str | None
    updated_at: datetime | None
    login_command: str = Field(description="What starts a login (it shows the QR here).")


async def _login(
    ingest: IngestDep, company_id: uuid.UUID, account_id: uuid.UUID
) -> tuple[str, WebLogin | None]:
    row = await ingest.plat.pool.fetchrow(
        "SELECT config FROM channel_accounts WHERE id = $1 AND company_id = $2"
        " AND channel = 'whatsapp_web'",
        account_id,
        company_id,
    )
    if row is None:
        raise not_found("WhatsApp Web channel account", account_id)
    account = str((row["config"] or {}).get("account") or "default")
    return account, await read_login(ingest.plat.pool, account)


@router.get("/channel-accounts/{account_id}/whatsapp-web", response_model=WebLoginOut)
async def web_login(
    account_id: uuid.UUID, company_id: AdminCompany, ingest: IngestDep
) -> WebLoginOut:
    account, login = await _login(ingest, company_id, account_id)
    return WebLoginOut(
        account_id=account_id,
        account=account,
        status=login.status if login else "not_started",
        qr=bool(login and login.qr_png),
        detail=login.detail if login else None,
        updated_at=login.updated_at if login else None,
        login_command=f"python -m shvya_dispatch whatsapp-web-login --account {account}",
    )


@router.get(
    "/channel-accounts/{account_id}/whatsapp-web/qr.png",
    response_class=Response,
    responses=PNG,  # type: ignore[arg-type]
)
async def web_login_qr(
    account_id: uuid.UUID, company_id: AdminCompany, ingest: IngestDep
) -> Response:
    """The current QR code; 404 when none is waiting (not started, linked or expired)."""
    _, login = await _login(ingest, company_id, account_id)
    if login is None or not login.qr_png:
        raise HTTPException(404, "no QR code is waiting for this account")
    return Response(login.qr_png, media_type="image/png", headers={"Cache-Control": "no-store"})
