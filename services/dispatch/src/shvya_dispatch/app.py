"""Wires dispatch: the channels (a plain dict, name to adapter), the router, the policy engine,
the send handler, the media download handler and the outbound webhooks' sender; and, with a
WhatsApp Business Account id, the template sync in the background. A channel is registered only
when its credentials are set; sends on other channels go to the log channel (or fail), as
UNCONFIGURED_CHANNELS says."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg
import httpx

from shvya_common.bus import Registration
from shvya_common.bus.ledgers import SendLedger
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_common.storage import LocalMediaStore
from shvya_dispatch import media as _media  # noqa: F401  (registers media.fetch)
from shvya_dispatch.channels import Channel, ChannelRouter
from shvya_dispatch.channels.email import EmailChannel
from shvya_dispatch.channels.graph_api import GraphApi
from shvya_dispatch.channels.log import LogChannel
from shvya_dispatch.channels.whatsapp_cloud import WhatsAppCloudChannel
from shvya_dispatch.channels.whatsapp_web import WhatsAppWebChannel
from shvya_dispatch.handlers import Deps, registry
from shvya_dispatch.media import MediaDeps
from shvya_dispatch.policies import PolicyEngine
from shvya_dispatch.repository import DispatchRepository, EmailRepository, PolicyRepository
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.template_sync import sync_loop
from shvya_dispatch.templates import TemplateRenderer
from shvya_dispatch.webhooks import Webhooks, WebhookSender, webhook_client
from shvya_dispatch.whatsapp_repository import WhatsAppRepository

SERVICE = "dispatch"
METRICS_PORT = 9102


def make_handlers(settings: DispatchSettings):  # type: ignore[no-untyped-def]
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        deps = await build_deps(settings, plat.pool, stack)
        media = await build_media_deps(settings, plat.pool, stack)
        return registry.bind(deps=deps, media=media)

    return factory


async def build_deps(settings: DispatchSettings, pool: asyncpg.Pool, stack: AsyncExitStack) -> Deps:
    """The channels, router and policy engine; resources they open are closed by `stack`."""
    log_channel = LogChannel(settings.log_channel_file)
    channels: dict[str, Channel] = {"log": log_channel}
    policy_repo = PolicyRepository(pool)
    whatsapp_repo = WhatsAppRepository(pool)
    fingerprints: dict[str, str | None] = {}
    if settings.whatsapp_cloud_configured:
        whatsapp = await whatsapp_cloud_channel(settings, stack, whatsapp_repo)
        channels[whatsapp.name] = whatsapp
        fingerprints[whatsapp.name] = whatsapp.credential_fingerprint
    if settings.smtp_host:
        channels[EmailChannel.name] = EmailChannel(settings, EmailRepository(pool))
    if settings.whatsapp_web_enabled:
        # Checks Chromium now; each account's browser opens on its first send, closes with stack.
        web = await stack.enter_async_context(WhatsAppWebChannel(settings))
        channels[web.name] = web
    router = ChannelRouter(channels, log_channel, settings.unconfigured_channels)
    policies = PolicyEngine.from_settings(policy_repo, settings, fingerprints, whatsapp_repo)
    return Deps(
        repo=DispatchRepository(pool),
        router=router,
        policies=policies,
        sends=SendLedger(pool),
        webhooks=await webhooks(settings, pool, stack),
    )


async def webhooks(
    settings: DispatchSettings, pool: asyncpg.Pool, stack: AsyncExitStack
) -> Webhooks:
    """Outbound webhooks' sender over one HTTP client, closed with the worker's stack."""
    client = await stack.enter_async_context(webhook_client(settings.webhook_timeout_seconds))
    sender = WebhookSender(
        client,
        timeout=settings.webhook_timeout_seconds,
        max_response_bytes=settings.webhook_max_response_bytes,
        allow_private=settings.webhook_allow_private_networks,
    )
    return Webhooks(
        pool=pool,
        sender=sender,
        box=settings.secret_box(),
        disable_after=settings.webhook_disable_after_failures,
    )


async def graph_api(settings: DispatchSettings, stack: AsyncExitStack) -> GraphApi:
    """Graph with the account's token over one HTTP client, closed with `stack`."""
    assert settings.whatsapp_cloud_token is not None
    timeout = httpx.Timeout(
        settings.whatsapp_cloud_timeout_seconds,
        connect=settings.whatsapp_cloud_connect_timeout_seconds,
    )
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
    return GraphApi(
        client,
        token=settings.whatsapp_cloud_token,
        base_url=settings.whatsapp_cloud_base_url,
        api_version=settings.whatsapp_cloud_api_version,
        block_pause_seconds=settings.whatsapp_cloud_block_pause_seconds,
        account_pause_seconds=settings.whatsapp_cloud_account_pause_seconds,
    )


async def whatsapp_cloud_channel(
    settings: DispatchSettings, stack: AsyncExitStack, repo: WhatsAppRepository
) -> WhatsAppCloudChannel:
    """The WhatsApp Cloud adapter over one HTTP client, closed with the worker's stack."""
    assert settings.whatsapp_cloud_phone_id is not None
    return WhatsAppCloudChannel(
        await graph_api(settings, stack),
        phone_number_id=settings.whatsapp_cloud_phone_id,
        templates=TemplateRenderer(repo),
    )


async def build_media_deps(
    settings: DispatchSettings, pool: asyncpg.Pool, stack: AsyncExitStack
) -> MediaDeps:
    graph = await graph_api(settings, stack) if settings.whatsapp_cloud_configured else None
    return MediaDeps(
        repo=WhatsAppRepository(pool),
        store=LocalMediaStore(settings.media_dir),
        graph=graph,
        max_bytes=settings.whatsapp_media_max_bytes,
        mime_types=frozenset(settings.whatsapp_media_mime_types),
    )


def template_sync(settings: DispatchSettings):  # type: ignore[no-untyped-def]
    """The background template sync, when a WABA id and credentials are set."""

    async def background(plat: Platform, stopping: asyncio.Event) -> None:
        if (
            not settings.whatsapp_cloud_configured
            or settings.whatsapp_cloud_waba_id is None
            or settings.whatsapp_template_sync_seconds <= 0
        ):
            return
        async with AsyncExitStack() as stack:
            graph = await graph_api(settings, stack)
            await sync_loop(
                plat.pool,
                graph,
                settings.whatsapp_cloud_waba_id,
                settings.whatsapp_cloud_phone_id,
                settings.whatsapp_template_sync_seconds,
                stopping,
            )

    return background


def main() -> None:
    settings = DispatchSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run(
        lambda: run_worker(
            settings, SERVICE, METRICS_PORT, make_handlers(settings), template_sync(settings)
        )
    )
