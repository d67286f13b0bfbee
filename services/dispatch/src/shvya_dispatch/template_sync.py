"""The template sync: local WhatsApp templates kept in step with Graph.

Each WhatsApp Business Account is synced once at start-up and then every
WHATSAPP_TEMPLATE_SYNC_SECONDS: the platform's (WHATSAPP_CLOUD_WABA_ID with the platform's
token, into the companies routed to it, else the default company) and every company account
that names a `waba_id` (with that account's token, into that company only). Accounts are looked
for every CHANNEL_ACCOUNTS_REFRESH_SECONDS, so a new or changed account is synced within that
time, not an hour later. A sync reads `GET /{version}/{waba-id}/message_templates` page by page
and hands the list to `shvya_common.whatsapp.templates.upsert_graph_templates`: new templates
appear, statuses (approved, paused, rejected, ...), quality and definitions follow Meta's, and
templates Meta no longer lists become `deleted`. The `message_template_status_update` webhook
applies single changes in between, through the same module. A failed sync is logged and tried
again at the next interval.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import structlog

from shvya_common.channel_accounts import accounts_on
from shvya_common.metrics import TEMPLATE_SYNCS
from shvya_common.whatsapp.templates import SyncOutcome, upsert_graph_templates
from shvya_dispatch.accounts import HostGuard, account_graph
from shvya_dispatch.channels.graph_api import GraphApi
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.whatsapp_repository import WhatsAppRepository

log = structlog.get_logger(__name__)

FIELDS = (
    "id,name,language,status,category,quality_score,components,parameter_format,rejected_reason"
)
PAGE_SIZE = 100
MAX_PAGES = 200


async def fetch_templates(graph: GraphApi, waba_id: str) -> list[dict[str, Any]]:
    """Every template of the account, following Graph's paging."""
    templates: list[dict[str, Any]] = []
    page = await graph.get(f"{waba_id}/message_templates", {"fields": FIELDS, "limit": PAGE_SIZE})
    for _ in range(MAX_PAGES):
        data = page.get("data") if isinstance(page, dict) else None
        templates += [t for t in data or [] if isinstance(t, dict)]
        paging = page.get("paging") if isinstance(page, dict) else None
        next_url = paging.get("next") if isinstance(paging, dict) else None
        if not isinstance(next_url, str) or not next_url:
            break
        page = await graph.get_url(next_url)
    return templates


async def sync_templates(
    pool: asyncpg.Pool,
    graph: GraphApi,
    repo: WhatsAppRepository,
    waba_id: str,
    phone_number_id: str | None,
    companies: list[uuid.UUID] | None = None,
) -> dict[str, SyncOutcome]:
    """One sync of the account's templates into `companies` (default: those of the account)."""
    templates = await fetch_templates(graph, waba_id)
    if companies is None:
        companies = await repo.company_ids_for_account(waba_id, phone_number_id)
    outcomes: dict[str, SyncOutcome] = {}
    for company_id in companies:
        async with pool.acquire() as conn, conn.transaction():
            outcomes[str(company_id)] = await upsert_graph_templates(conn, company_id, templates)
    return outcomes


@dataclass(frozen=True)
class SyncTarget:
    """One WhatsApp Business Account to sync, with the Graph client that may read it; a
    company account's target syncs into that company only."""

    key: str
    graph: GraphApi
    waba_id: str
    phone_number_id: str | None
    company_id: uuid.UUID | None = None
    # Changes when the account's credentials or WABA change, which syncs it again at once.
    version: str = ""


class AccountSyncTargets:
    """The platform's target, if any, and one per company account with a WABA id and token."""

    def __init__(
        self,
        settings: DispatchSettings,
        pool: asyncpg.Pool,
        client: httpx.AsyncClient,
        platform: SyncTarget | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.platform = platform
        self.box = settings.secret_box()
        self.hosts = HostGuard(settings.channel_accounts_allow_private_hosts)

    async def __call__(self) -> list[SyncTarget]:
        targets = [self.platform] if self.platform is not None else []
        for account in await accounts_on(self.pool, self.box, "whatsapp_cloud"):
            waba_id = account.config.get("waba_id")
            if not waba_id or not account.secrets.get("access_token"):
                continue
            targets.append(
                SyncTarget(
                    f"account:{account.id}",
                    account_graph(self.settings, self.client, account, self.hosts),
                    str(waba_id),
                    account.config.get("phone_number_id"),
                    account.company_id,
                    account.version(),
                )
            )
        return targets


async def _sync_one(pool: asyncpg.Pool, repo: WhatsAppRepository, target: SyncTarget) -> None:
    try:
        companies = [target.company_id] if target.company_id is not None else None
        outcomes = await sync_templates(
            pool, target.graph, repo, target.waba_id, target.phone_number_id, companies
        )
        TEMPLATE_SYNCS.labels("whatsapp_cloud", "ok").inc()
        for company_id, outcome in outcomes.items():
            log.info("templates_synced", company_id=company_id, **outcome.__dict__)
    except Exception as err:  # Graph or the database briefly down: try again later
        TEMPLATE_SYNCS.labels("whatsapp_cloud", "failed").inc()
        log.warning(
            "template_sync_failed", target=target.key, error=f"{type(err).__name__}: {err}"[:300]
        )


async def sync_loop(
    pool: asyncpg.Pool,
    targets: Callable[[], Awaitable[list[SyncTarget]]],
    interval: float,
    stopping: asyncio.Event,
    *,
    refresh: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Sync each target now, then every `interval` seconds (a new or changed one within
    `refresh` seconds), until `stopping` is set."""
    repo = WhatsAppRepository(pool)
    done: dict[str, tuple[str, float]] = {}
    while not stopping.is_set():
        try:
            current = await targets()
        except Exception as err:  # the database briefly down: look again later
            log.warning("template_sync_targets_failed", error=f"{type(err).__name__}: {err}"[:300])
            current = []
        for target in current:
            last = done.get(target.key)
            if last is not None and last[0] == target.version and clock() - last[1] < interval:
                continue
            await _sync_one(pool, repo, target)
            done[target.key] = (target.version, clock())
        try:
            await asyncio.wait_for(stopping.wait(), min(interval, refresh))
        except TimeoutError:
            pass
