"""The CRM API: REST under /v1, every route authenticated, every query scoped to the caller's
company (see `shvya_ingest.auth`)."""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    from shvya_ingest.v1 import channels, company_data, crm, identity

    return [identity.router, crm.router, company_data.router, channels.router]
