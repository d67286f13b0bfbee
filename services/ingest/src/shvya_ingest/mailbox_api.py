"""Admin routes for a company's IMAP mailboxes: connect one (its password stored encrypted with
SECRETS_KEYS), list them with their reading status, disconnect one. Ingest's readers pick up a
change within IMAP_REFRESH_SECONDS."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.auth import AdminCompany
from shvya_ingest.imap_reader import password_context
from shvya_ingest.v1.common import ERRORS, V1, MailboxId

router = APIRouter(
    prefix="/v1/email/mailboxes",
    dependencies=V1,
    responses=ERRORS,
    tags=["admin"],
)


class MailboxIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples(
            {
                "host": "imap.acme.example",
                "username": "sales@acme.example",
                "password": "an app password",
                "after_filing": "move",
                "filed_folder": "Filed",
            }
        ),
    )

    host: str = Field(min_length=1, max_length=253)
    port: int | None = Field(None, ge=1, le=65535, description="Unset: 993 (tls) or 143 (none).")
    security: Literal["tls", "none"] = "tls"
    username: str = Field(min_length=1, max_length=320)
    password: SecretStr
    folder: str = Field("INBOX", min_length=1, max_length=200)
    after_filing: Literal["flag", "move"] = "flag"
    filed_folder: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _folder_for_move(self) -> MailboxIn:
        if self.after_filing == "move" and not self.filed_folder:
            raise ValueError("after_filing 'move' needs filed_folder")
        return self


class MailboxOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.MAILBOX_ID,
                "company_id": ex.COMPANY_ID,
                "host": "imap.acme.example",
                "port": 993,
                "security": "tls",
                "username": "sales@acme.example",
                "folder": "INBOX",
                "after_filing": "move",
                "filed_folder": "Filed",
                "enabled": True,
                "since": ex.CREATED,
                "last_checked_at": ex.UPDATED,
                "last_filed_at": ex.UPDATED,
                "last_error": None,
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    host: str
    port: int
    security: str
    username: str
    folder: str
    after_filing: str
    filed_folder: str | None
    enabled: bool
    since: datetime
    last_checked_at: datetime | None
    last_filed_at: datetime | None
    last_error: str | None


_COLUMNS = (
    "id, company_id, host, port, security, username, folder, after_filing, filed_folder,"
    " enabled, since, last_checked_at, last_filed_at, last_error"
)


@router.post("", status_code=201, response_model=MailboxOut)
async def connect_mailbox(
    company_id: AdminCompany, body: MailboxIn, ingest: IngestDep
) -> MailboxOut:
    """Connect a mailbox: its new mail (from now on) is filed as inbound email."""
    box = ingest.settings.secret_box()
    if box is None:
        raise HTTPException(409, "set SECRETS_KEYS first: mailbox passwords are stored encrypted")
    mailbox_id = uuid.uuid4()
    secret = box.encrypt(body.password.get_secret_value(), password_context(mailbox_id))
    port = body.port or (993 if body.security == "tls" else 143)
    row = await ingest.plat.pool.fetchrow(
        "INSERT INTO email_mailboxes (id, company_id, host, port, security, username, password,"
        " folder, after_filing, filed_folder)"
        " SELECT $1, id, $3, $4, $5, $6, $7, $8, $9, $10 FROM companies WHERE id = $2"
        " ON CONFLICT (company_id, host, username, folder) DO NOTHING"
        f" RETURNING {_COLUMNS}",
        mailbox_id,
        company_id,
        body.host,
        port,
        body.security,
        body.username,
        secret,
        body.folder,
        body.after_filing,
        body.filed_folder,
    )
    if row is None:
        exists = await ingest.plat.pool.fetchval(
            "SELECT 1 FROM companies WHERE id = $1", company_id
        )
        if not exists:
            raise HTTPException(404, f"company_id {company_id} does not exist")
        raise HTTPException(409, "this mailbox is already connected for the company")
    return MailboxOut(**dict(row))


@router.get("", response_model=list[MailboxOut], responses=ex.listed(MailboxOut))
async def list_mailboxes(company_id: AdminCompany, ingest: IngestDep) -> list[MailboxOut]:
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_COLUMNS} FROM email_mailboxes WHERE company_id = $1 ORDER BY created_at",
        company_id,
    )
    return [MailboxOut(**dict(r)) for r in rows]


@router.delete("/{mailbox_id}", status_code=204)
async def disconnect_mailbox(
    company_id: AdminCompany, mailbox_id: MailboxId, ingest: IngestDep
) -> Response:
    deleted = await ingest.plat.pool.fetchval(
        "DELETE FROM email_mailboxes WHERE id = $1 AND company_id = $2 RETURNING id",
        mailbox_id,
        company_id,
    )
    if deleted is None:
        raise HTTPException(404, "no such mailbox for this company")
    return Response(status_code=204)
