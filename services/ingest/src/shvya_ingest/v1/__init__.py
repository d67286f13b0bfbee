"""The CRM API: REST under /v1, every route authenticated, every query scoped to the caller's
company (see `shvya_ingest.auth`). `session` (console sign-in) is the one /v1 router that takes
no credential, so it is not among `routers()`."""

from __future__ import annotations

from fastapi import APIRouter

from shvya_ingest.v1 import session, stream


def routers() -> list[APIRouter]:
    from shvya_ingest.v1 import (
        channels,
        company_data,
        conversations,
        crm,
        identity,
        media,
        operations,
        whatsapp_web,
    )

    return [
        identity.router,
        crm.router,
        company_data.router,
        channels.router,
        conversations.router,
        media.router,
        operations.router,
        whatsapp_web.router,
        stream.router,
    ]


__all__ = ["routers", "session", "stream"]
