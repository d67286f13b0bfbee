"""Wires dispatch: the channels (a plain dict, name to adapter), the router, the policy engine,
the outbound webhooks' sender, and the handlers. A channel is registered only when its
credentials are set; sends on other channels go to the log channel (or fail), as
UNCONFIGURED_CHANNELS says."""

from __future__ import annotations

from contextlib import AsyncExitStack

import asyncpg
import httpx

from shvya_common.bus import Registration
from shvya_common.bus.ledgers import SendLedger
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_dispatch.channels import Channel, ChannelRouter
from shvya_dispatch.channels.email import EmailChannel
from shvya_dispatch.channels.log import LogChannel
from shvya_dispatch.channels.whatsapp_cloud import WhatsAppCloudChannel
from shvya_dispatch.channels.whatsapp_web import WhatsAppWebChannel
from shvya_dispatch.handlers import Deps, registry
from shvya_dispatch.policies import PolicyEngine
from shvya_dispatch.repository import DispatchRepository, EmailRepository, PolicyRepository
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.templates import TemplateRenderer
from shvya_dispatch.webhooks import Webhooks, WebhookSender, webhook_client

SERVICE = "dispatch"
METRICS_PORT = 9102


def make_handlers(settings: DispatchSettings):  # type: ignore[no-untyped-def]
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        deps = await build_deps(settings, plat.pool, stack)
        return registry.bind(deps=deps)

    return factory


async def build_deps(settings: DispatchSettings, pool: asyncpg.Pool, stack: AsyncExitStack) -> Deps:
    """The channels, router and policy engine; resources they open are closed by `stack`."""
    log_channel = LogChannel(settings.log_channel_file)
    channels: dict[str, Channel] = {"log": log_channel}
    policy_repo = PolicyRepository(pool)
    fingerprints: dict[str, str | None] = {}
    if settings.whatsapp_cloud_configured:
        whatsapp = await whatsapp_cloud_channel(settings, stack, policy_repo)
        channels[whatsapp.name] = whatsapp
        fingerprints[whatsapp.name] = whatsapp.credential_fingerprint
    if settings.smtp_host:
        channels[EmailChannel.name] = EmailChannel(settings, EmailRepository(pool))
    if settings.whatsapp_web_enabled:
        # Checks Chromium now; each account's browser opens on its first send, closes with stack.
        web = await stack.enter_async_context(WhatsAppWebChannel(settings))
        channels[web.name] = web
    router = ChannelRouter(channels, log_channel, settings.unconfigured_channels)
    policies = PolicyEngine.from_settings(policy_repo, settings, fingerprints)
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


async def whatsapp_cloud_channel(
    settings: DispatchSettings, stack: AsyncExitStack, repo: PolicyRepository
) -> WhatsAppCloudChannel:
    """The WhatsApp Cloud adapter over one HTTP client, closed with the worker's stack."""
    assert settings.whatsapp_cloud_phone_id is not None
    assert settings.whatsapp_cloud_token is not None
    timeout = httpx.Timeout(
        settings.whatsapp_cloud_timeout_seconds,
        connect=settings.whatsapp_cloud_connect_timeout_seconds,
    )
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
    return WhatsAppCloudChannel(
        client,
        phone_number_id=settings.whatsapp_cloud_phone_id,
        token=settings.whatsapp_cloud_token,
        base_url=settings.whatsapp_cloud_base_url,
        api_version=settings.whatsapp_cloud_api_version,
        templates=TemplateRenderer(repo),
        block_pause_seconds=settings.whatsapp_cloud_block_pause_seconds,
    )


def main() -> None:
    settings = DispatchSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, make_handlers(settings)))
