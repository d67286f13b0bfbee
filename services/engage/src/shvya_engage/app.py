"""Wires engage: the responder (OpenAI when a key is set, else offline) and its handlers."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack

import openai
import structlog

from shvya_common.bus.worker import Handler
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_engage.handlers import Deps, handle_engage
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
    return OpenAIResponder(client, settings.default_model)


def make_handlers(settings: EngageSettings):  # type: ignore[no-untyped-def]
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Handler]:
        deps = Deps(
            bus=plat.bus,
            repo=EngageRepository(plat.pool),
            responder=await build_responder(settings, stack),
            history_messages=settings.history_messages,
        )
        return {"ai.engage": functools.partial(handle_engage, deps=deps)}

    return factory


def main() -> None:
    settings = EngageSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, make_handlers(settings)))
