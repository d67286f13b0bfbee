"""Wires engage: the responder (OpenAI when a key is set, else offline), the knowledge-base
retriever, and the handlers for ai.engage, ai.summary and followup.bumpup."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import asyncpg
import openai
import structlog

from shvya_common.bus import Registration
from shvya_common.knowledge import Embedder, open_embedder, retrieve
from shvya_common.logging import configure_logging
from shvya_common.runtime import HandlerFactory, Platform, run, run_worker
from shvya_engage.gate import ModelGate
from shvya_engage.handlers import Deps, Retrieved, Retriever, registry
from shvya_engage.prompts import encoding
from shvya_engage.repository import EngageRepository
from shvya_engage.responders import OfflineResponder, OpenAIResponder, Responder
from shvya_engage.settings import EngageSettings

SERVICE = "engage"
METRICS_PORT = 9101
log = structlog.get_logger(__name__)


async def build_responder(settings: EngageSettings, stack: AsyncExitStack) -> Responder:
    if settings.openai_api_key is None:
        log.warning("offline_responder", detail="OPENAI_API_KEY unset: replies are offline")
        return OfflineResponder()
    client = openai.AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
        max_retries=0,  # retries belong to the job schedule
        http_client=openai.DefaultAioHttpClient(),
    )
    stack.push_async_callback(client.close)
    gate = ModelGate(settings.model_concurrency, per_company=settings.model_concurrency_per_company)
    return OpenAIResponder(
        client,
        settings.default_model,
        summary_max_tokens=settings.summary_max_tokens,
        gate=gate,
        rate_limit_wait=settings.model_rate_limit_wait_seconds,
    )


def make_retriever(pool: asyncpg.Pool, embedder: Embedder | None) -> Retriever:
    """Hybrid retrieval over the company's knowledge base; keyword-only without an embedder."""

    async def retrieve_chunks(
        company_id: uuid.UUID, query: str, k: int, known_empty: bool = False
    ) -> Retrieved:
        if known_empty:
            # What `retrieve` answers for an empty knowledge base, without asking again.
            mode = "hybrid" if embedder is not None else "keyword"
            note = "empty query" if not query.strip() else "this company's knowledge base is empty"
            return Retrieved([], mode, note)
        found = await retrieve(pool, company_id, query, k=k, embedder=embedder)
        return Retrieved(list(found.chunks), found.mode, found.note)

    return retrieve_chunks


def make_handlers(settings: EngageSettings) -> HandlerFactory:
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        # Loading the BPE ranks takes a moment: do it now, not inside the first job.
        await asyncio.to_thread(encoding)
        deps = Deps(
            bus=plat.bus,
            repo=EngageRepository(plat.pool),
            responder=await build_responder(settings, stack),
            retrieve=make_retriever(
                plat.pool, await stack.enter_async_context(open_embedder(settings))
            ),
            settings=settings,
        )
        return registry.bind(deps=deps)

    return factory


def main() -> None:
    settings = EngageSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, make_handlers(settings)))
