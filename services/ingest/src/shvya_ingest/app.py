"""Wires ingest: settings, the platform resources in a FastAPI lifespan, routes, middleware;
`main()` serves it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from shvya_common.logging import configure_logging
from shvya_common.runtime import platform
from shvya_ingest.api import Ingest, admin, install_error_handlers, router
from shvya_ingest.middleware import EdgeMiddleware
from shvya_ingest.settings import IngestSettings

SERVICE = "ingest"


def create_app(settings: IngestSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with platform(settings, SERVICE) as plat:
            ingest = Ingest(settings, plat)
            await ingest.route_for(None)  # the default company and its pipeline exist up front
            app.state.ingest = ingest
            yield

    app = FastAPI(
        title="SHVYA ingest",
        description="Inbound messages and webhooks in; queue stats and admin out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(admin)
    install_error_handlers(app)
    app.add_middleware(
        EdgeMiddleware,
        max_body=settings.max_body_bytes,
        webhook_max_body=settings.webhook_max_body_bytes,
        timeout=settings.request_timeout_seconds,
    )
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory shvya_ingest.app:app_factory` (several workers)."""
    settings = IngestSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    return create_app(settings)


def main() -> None:
    settings = IngestSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    if settings.http_workers > 1:
        uvicorn.run(
            "shvya_ingest.app:app_factory", factory=True, host=settings.host, port=settings.port,
            workers=settings.http_workers, access_log=False, log_level="warning",
            loop="uvloop", http="httptools",
        )  # fmt: skip
        return
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, access_log=False,
        log_level="warning", loop="uvloop", http="httptools",
    )  # fmt: skip
