"""The template sync: local WhatsApp templates kept in step with Graph.

Every WHATSAPP_TEMPLATE_SYNC_SECONDS (and once at start-up) dispatch reads
`GET /{version}/{waba-id}/message_templates` page by page and hands the list to
`shvya_common.whatsapp.templates.upsert_graph_templates` for each company of that account: new
templates appear, statuses (approved, paused, rejected, ...), quality and definitions follow
Meta's, and templates Meta no longer lists become `deleted`. The
`message_template_status_update` webhook applies single changes in between, through the same
module. A failed sync is logged and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from shvya_common.metrics import TEMPLATE_SYNCS
from shvya_common.whatsapp.templates import SyncOutcome, upsert_graph_templates
from shvya_dispatch.channels.graph_api import GraphApi
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
) -> dict[str, SyncOutcome]:
    """One sync of the account's templates into each of its companies."""
    templates = await fetch_templates(graph, waba_id)
    outcomes: dict[str, SyncOutcome] = {}
    for company_id in await repo.company_ids_for_account(waba_id, phone_number_id):
        async with pool.acquire() as conn, conn.transaction():
            outcomes[str(company_id)] = await upsert_graph_templates(conn, company_id, templates)
    return outcomes


async def sync_loop(
    pool: asyncpg.Pool,
    graph: GraphApi,
    waba_id: str,
    phone_number_id: str | None,
    interval: float,
    stopping: asyncio.Event,
) -> None:
    """Sync now, then every `interval` seconds, until `stopping` is set."""
    repo = WhatsAppRepository(pool)
    while not stopping.is_set():
        try:
            outcomes = await sync_templates(pool, graph, repo, waba_id, phone_number_id)
            TEMPLATE_SYNCS.labels("whatsapp_cloud", "ok").inc()
            for company_id, outcome in outcomes.items():
                log.info("templates_synced", company_id=company_id, **outcome.__dict__)
        except Exception as err:  # Graph or the database briefly down: try again later
            TEMPLATE_SYNCS.labels("whatsapp_cloud", "failed").inc()
            log.warning("template_sync_failed", error=f"{type(err).__name__}: {err}"[:300])
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass
