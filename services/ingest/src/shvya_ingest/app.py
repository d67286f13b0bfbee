"""Wires ingest: settings, the platform resources in a FastAPI lifespan, routes, middleware;
`main()` serves it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from shvya_common.bus import Worker
from shvya_common.logging import configure_logging
from shvya_common.metrics import start_metrics_server
from shvya_common.runtime import platform, settle_heap
from shvya_ingest import (
    asyncapi_route,
    campaigns_api,
    console,
    email_routes,
    examples,
    kb_api,
    mail_webhooks,
    mailbox_api,
    outbound_api,
    reports_api,
    schedules_api,
    sequences_api,
    v1,
    webhooks,
)
from shvya_ingest.api import Ingest, admin, install_error_handlers, router
from shvya_ingest.audit_trail import AuditTrail
from shvya_ingest.fastpath import InboundFastPath
from shvya_ingest.imap_reader import MailboxReaders
from shvya_ingest.late_failures import LateFailures
from shvya_ingest.middleware import EdgeMiddleware
from shvya_ingest.settings import IngestSettings
from shvya_ingest.smtp_receiver import start_smtp_receiver
from shvya_ingest.status_policy import StatusPolicyConfig
from shvya_ingest.whatsapp_web_inbound import registry as web_inbound

log = structlog.get_logger(__name__)

SERVICE = "ingest"
METRICS_PORT = 9100


def create_app(settings: IngestSettings) -> FastAPI:
    settings.link_key()  # refuse a missing, short or placeholder LINK_SECRET before anything

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with platform(settings, SERVICE) as plat:
            ingest = Ingest(settings, plat)
            await ingest.route_for(None)  # the default company and its pipeline exist up front
            app.state.ingest = ingest
            await ingest.live.start()
            smtp = await start_smtp_receiver(ingest) if settings.smtp_receiver_enabled else None
            mailboxes = MailboxReaders(ingest) if settings.imap_enabled else None
            if mailboxes is not None:
                mailboxes.start()
            # What linked WhatsApp Web accounts receive comes as jobs (dispatch writes them);
            # ingest files them, so a small worker runs beside the HTTP server.
            worker = Worker(
                service=SERVICE,
                bus=plat.bus,
                nc=plat.nc,
                handlers=web_inbound.bind(ingest=ingest),
                retry_schedule=settings.retry_schedule,
                concurrency=max(2, min(settings.worker_concurrency, 8)),
                reserved_p1=0,
                ack_wait=settings.ack_wait_seconds,
                poll_seconds=settings.worker_poll_seconds,
                keeper=plat.keeper,
            )
            await worker.start()
            # Failed statuses that beat dispatch's record of their wamid (late_failures.py).
            late_failures = LateFailures(
                plat.bus,
                StatusPolicyConfig.from_settings(settings),
                settings.whatsapp_status_late_poll_seconds,
            )
            late_failures.start()
            settle_heap()
            # The same start and stop lines as the worker services (shvya_common.runtime), so
            # one log query follows all four; uvicorn listens once this lifespan has yielded.
            log.info("service_ready", host=settings.host, port=settings.port)
            try:
                yield
            finally:
                log.info("service_stopping")
                await late_failures.stop()
                await worker.stop()
                # Stop receiving mail (SMTP, IMAP) before the pool closes.
                if mailboxes is not None:
                    await mailboxes.stop()
                if smtp is not None:
                    smtp.close()
                    await smtp.wait_closed()
                await ingest.live.close()
                await ingest.batcher.close()
                await ingest.media.aclose()
        log.info("service_stopped")

    app = FastAPI(
        title="SHVYA ingest",
        description="Inbound messages and webhooks in; queue stats and admin out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(admin)
    for v1_router in v1.routers():
        app.include_router(v1_router)
    app.include_router(v1.session.router)  # signing in needs no credential: not in routers()
    if settings.console_enabled:
        app.include_router(console.router)
    app.include_router(webhooks.router)
    app.include_router(email_routes.router)
    app.include_router(mail_webhooks.router)
    app.include_router(mailbox_api.router)
    app.include_router(sequences_api.router)
    app.include_router(kb_api.router)  # its lifespan opens the embedder, inside the platform's
    app.include_router(outbound_api.router)
    app.include_router(campaigns_api.router)
    app.include_router(schedules_api.router)
    app.include_router(reports_api.router)
    app.include_router(asyncapi_route.router)
    install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = examples.with_nulls(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Added first, so it runs inside the edge middleware: body limits, the deadline and metrics
    # apply to it too (Starlette wraps later middleware around earlier ones).
    # Innermost: it sees the route FastAPI matched and the caller the handler authenticated.
    app.add_middleware(AuditTrail, fastapi_app=app)
    if settings.fast_path:
        app.add_middleware(InboundFastPath, fastapi_app=app)
    app.add_middleware(
        EdgeMiddleware,
        max_body=settings.max_body_bytes,
        webhook_max_body=settings.webhook_max_body_bytes,
        timeout=settings.request_timeout_seconds,
        routes=[
            kb_api.route_limits(settings),
            mail_webhooks.route_limits(settings),
            v1.stream.route_limits(settings),
        ],
    )
    if settings.otel_exporter_otlp_endpoint:  # outermost: its span covers the whole request
        app.add_middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"])
    return app


def serve_metrics(settings: IngestSettings, workers: int = 1) -> None:
    """Prometheus metrics on their own port (METRICS_HOST, loopback by default), not the public
    one. With several HTTP workers each takes the first free port from METRICS_PORT on."""
    base = settings.metrics_port or METRICS_PORT
    for port in range(base, base + workers):
        try:
            start_metrics_server(settings.metrics_host, port)
            return
        except OSError:
            continue
    raise SystemExit(f"no free metrics port in {base}..{base + workers - 1}")


def graceful_seconds(settings: IngestSettings) -> int:
    """How long a stop waits for requests in hand: any ordinary request ends within its
    deadline. The console's live streams end themselves on a stop where the server is known
    (one worker); with several workers they are cut here (the browser reconnects)."""
    return int(settings.request_timeout_seconds) + 2


def app_factory() -> FastAPI:
    """For `uvicorn --factory shvya_ingest.app:app_factory` (several workers)."""
    settings = IngestSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    serve_metrics(settings, settings.http_workers)
    return create_app(settings)


def main() -> None:
    settings = IngestSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    try:
        settings.link_key()
    except ValueError as err:
        raise SystemExit(f"ingest: {err}") from None
    if settings.http_workers > 1:
        uvicorn.run(
            "shvya_ingest.app:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.http_workers,
            timeout_graceful_shutdown=graceful_seconds(settings),
            access_log=False,
            log_level="warning",
            loop="uvloop",
            http="httptools",
        )
        return
    serve_metrics(settings)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            timeout_graceful_shutdown=graceful_seconds(settings),
            access_log=False,
            log_level="warning",
            loop="uvloop",
            http="httptools",
        )
    )
    # Live streams watch `should_exit` and end at once on a stop (see v1/stream.py).
    app.state.server = server
    server.run()
