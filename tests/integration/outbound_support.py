"""Helpers for outbound webhook tests: a real HTTP receiver on 127.0.0.1 that verifies every
delivery with the `standardwebhooks` package, and the platform in this process — ingest's API
(ASGI), dispatch's `webhook.reminder` worker over the real JetStream consumers, and the
scheduler's event feed and timer loop — with retries compressed through the task's policy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shvya_common.bus import RetryPolicy, Worker
from shvya_common.crypto import generate_key
from shvya_dispatch.app import build_deps
from shvya_dispatch.handlers import registry
from shvya_dispatch.settings import DispatchSettings
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from shvya_scheduler import tasks
from shvya_scheduler.feed import feed_loop
from shvya_scheduler.handlers import timer_loop

SECRETS_KEYS = f"k1:{generate_key()}"
FAST_RETRY = RetryPolicy(schedule=(0.05, 0.05, 0.05, 0.05), jitter=0.2)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    # The secrets (by position in Receiver.secrets) the signature verified with.
    verified_with: list[int]
    payload: dict[str, Any] | None


@dataclass
class Receiver:
    """A webhook receiver: answers `statuses` in turn (then 204), or what `respond` says."""

    secrets: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    redirect_to: str | None = None
    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        verified, payload = [], None
        for n, secret in enumerate(self.secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(n)
        self.received.append(Received(headers, body, verified, payload))
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status, text="" if status == 204 else f"status {status}")

    def verified(self) -> list[Received]:
        return [r for r in self.received if r.verified_with]


@asynccontextmanager
async def receiver(**kwargs: Any) -> AsyncIterator[Receiver]:
    """A Receiver listening on 127.0.0.1 (any path)."""
    rx = Receiver(**kwargs)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    try:
        yield rx
    finally:
        await runner.cleanup()


@dataclass
class Outbound:
    """The platform's outbound-webhook path, running in this process."""

    api: httpx.AsyncClient
    pool: asyncpg.Pool
    company_id: uuid.UUID

    async def register(self, url: str, types: list[str], **extra: Any) -> dict[str, Any]:
        response = await self.api.post(
            f"/admin/companies/{self.company_id}/webhooks/endpoints",
            json={"url": url, "event_types": types, **extra},
        )
        assert response.status_code == 201, response.text
        endpoint: dict[str, Any] = response.json()
        return endpoint

    async def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        response = await self.api.get(
            f"/admin/companies/{self.company_id}/webhooks/endpoints/{endpoint_id}/deliveries"
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["deliveries"]
        return found

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        response = await self.api.get(
            f"/admin/companies/{self.company_id}/webhooks/deliveries/{delivery_id}"
        )
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        response = await self.api.get(
            f"/admin/companies/{self.company_id}/webhooks/endpoints/{endpoint_id}"
        )
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def events(self, kind: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT payload FROM events WHERE company_id = $1 AND type = $2 ORDER BY created_at",
            self.company_id,
            kind,
        )
        return [r["payload"] for r in rows]


@asynccontextmanager
async def outbound(
    plat: Any,
    base_env: dict[str, str],
    *,
    retry: RetryPolicy = FAST_RETRY,
    allow_private: bool = True,
    disable_after: int = 5,
    ingest_allows_private: bool = True,
) -> AsyncIterator[Outbound]:
    """Ingest's API, dispatch's webhook worker and the scheduler's feed and timers, in this
    process; dispatch reaches loopback only when `allow_private`."""
    tasks.load()
    company_id = await plat.pool.fetchval(
        "INSERT INTO companies (name, timezone) VALUES ('Acme Solar', 'UTC') RETURNING id"
    )
    ingest_values = {k.lower(): v for k, v in base_env.items()}
    ingest_values.update(
        secrets_keys=SECRETS_KEYS,
        embeddings_provider="none",
        webhook_allow_private_networks=str(ingest_allows_private).lower(),
    )
    dispatch_settings = DispatchSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=base_env["DATABASE_URL"],
        secrets_keys=SECRETS_KEYS,
        webhook_allow_private_networks=allow_private,
        webhook_timeout_seconds=3.0,
        webhook_disable_after_failures=disable_after,
    )
    stopping = asyncio.Event()
    app = create_app(IngestSettings(**ingest_values))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        deps = await build_deps(dispatch_settings, plat.pool, stack)
        registrations = registry.bind(deps=deps)
        webhook = registrations["webhook.reminder"]
        worker = Worker(
            service="dispatch",
            bus=plat.bus,
            nc=plat.nc,
            handlers={"webhook.reminder": dataclasses.replace(webhook, retry=retry)},
            retry_schedule=[0.05],
            concurrency=4,
            ack_wait=5.0,
            poll_seconds=0.05,
        )
        await worker.start()
        background = [
            asyncio.create_task(feed_loop(plat.bus, stopping, 0.05, 100)),
            asyncio.create_task(timer_loop(plat.bus, stopping, 0.05, 100)),
        ]
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://ingest",
                headers={"Authorization": f"Bearer {base_env['ADMIN_TOKEN']}"},
            )
        )
        try:
            yield Outbound(api=api, pool=plat.pool, company_id=company_id)
        finally:
            stopping.set()
            for task in background:
                with contextlib.suppress(Exception):
                    await task
            await worker.stop(timeout=5.0)
