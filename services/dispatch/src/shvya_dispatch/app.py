"""Wires dispatch: the platform's channels (a plain dict, name to adapter), companies' own
channel accounts (`accounts.CompanyChannels`), the router, the policy engine, the send handler,
the media download handler and the outbound webhooks' sender; and the template sync in the
background. A platform channel is registered only when its credentials are set; a company with
its own account on a channel sends through it, and sends on channels neither has go to the log
channel (or fail), as
UNCONFIGURED_CHANNELS says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import asyncpg
import httpx

from shvya_common.bus import JobBus, Registration
from shvya_common.bus.ledgers import SendLedger
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_common.storage import media_store
from shvya_dispatch import media as _media  # noqa: F401  (registers media.fetch)
from shvya_dispatch.accounts import AccountDirectory, CompanyChannels
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
from shvya_dispatch.template_sync import AccountSyncTargets, SyncTarget, sync_loop
from shvya_dispatch.templates import TemplateRenderer
from shvya_dispatch.web_accounts import WebAccounts
from shvya_dispatch.web_policy import WebRules
from shvya_dispatch.webhooks import Webhooks, WebhookSender, webhook_client
from shvya_dispatch.whatsapp_repository import WhatsAppRepository

SERVICE = "dispatch"
METRICS_PORT = 9102


def make_handlers(settings: DispatchSettings, running: list[WebAccounts] | None = None):  # type: ignore[no-untyped-def]
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        deps = await build_deps(settings, plat.pool, stack, bus=plat.bus)
        if running is not None and deps.web_accounts is not None:
            running.append(deps.web_accounts)
        accounts = deps.router.accounts
        companies = accounts if isinstance(accounts, CompanyChannels) else None
        media = await build_media_deps(settings, plat.pool, stack, companies)
        return registry.bind(deps=deps, media=media)

    return factory


async def company_channels(
    settings: DispatchSettings,
    pool: asyncpg.Pool,
    stack: AsyncExitStack,
    *,
    web: WhatsAppWebChannel | None = None,
    platform_fingerprints: dict[str, str | None] | None = None,
    platform_graph: GraphApi | None = None,
) -> CompanyChannels:
    """Companies' own channel accounts, over one HTTP client for their Graph calls."""
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=_graph_timeout(settings)))
    return CompanyChannels(
        settings,
        AccountDirectory(pool, settings.secret_box(), settings.channel_accounts_refresh_seconds),
        client,
        TemplateRenderer(WhatsAppRepository(pool)),
        EmailRepository(pool),
        web=web,
        platform_fingerprints=platform_fingerprints,
        platform_graph=platform_graph,
    )


async def build_deps(
    settings: DispatchSettings,
    pool: asyncpg.Pool,
    stack: AsyncExitStack,
    *,
    bus: JobBus | None = None,
) -> Deps:
    """The channels (the platform's, and each company's own accounts), router and policy
    engine, and with WhatsApp Web its account supervisor (not yet running); resources they
    open are closed by `stack`."""
    log_channel = LogChannel(settings.log_channel_file)
    channels: dict[str, Channel] = {"log": log_channel}
    policy_repo = PolicyRepository(pool)
    whatsapp_repo = WhatsAppRepository(pool)
    fingerprints: dict[str, str | None] = {}
    platform_graph: GraphApi | None = None
    if settings.whatsapp_cloud_configured:
        whatsapp = await whatsapp_cloud_channel(settings, stack, whatsapp_repo)
        channels[whatsapp.name] = whatsapp
        fingerprints[whatsapp.name] = whatsapp.credential_fingerprint
        platform_graph = whatsapp.graph
    if settings.smtp_host:
        channels[EmailChannel.name] = EmailChannel(settings, EmailRepository(pool))
    web: WhatsAppWebChannel | None = None
    if settings.whatsapp_web_enabled:
        # Checks Chromium now; each account's browser opens on its first send, closes with stack.
        web = await stack.enter_async_context(WhatsAppWebChannel(settings))
        channels[web.name] = web
    companies = await company_channels(
        settings,
        pool,
        stack,
        web=web,
        platform_fingerprints=fingerprints,
        platform_graph=platform_graph,
    )
    if web is not None:
        web.profiles = companies.web_profile
    router = ChannelRouter(channels, log_channel, settings.unconfigured_channels, companies)
    policies = PolicyEngine.from_settings(
        policy_repo, settings, companies.fingerprint, companies.web_profile, whatsapp_repo
    )
    supervisor: WebAccounts | None = None
    if web is not None:
        supervisor = WebAccounts(settings, pool, bus, web)

        async def cloud_for(company_id: uuid.UUID) -> bool:
            if await companies.adapter("whatsapp_cloud", company_id) is not None:
                return True
            return "whatsapp_cloud" in channels

        policies.web = web_rules(settings, pool, supervisor.may_drive, cloud_for)
        policies.web_pause = supervisor.pause
    return Deps(
        repo=DispatchRepository(pool),
        router=router,
        policies=policies,
        sends=SendLedger(pool),
        webhooks=await webhooks(settings, pool, stack),
        bus=bus,
        web_accounts=supervisor,
    )


def web_rules(
    settings: DispatchSettings,
    pool: asyncpg.Pool,
    may_drive: Callable[[str], Awaitable[bool]] | None,
    cloud_for: Callable[[uuid.UUID], Awaitable[bool]] | None,
) -> WebRules:
    """WhatsApp Web's ban-aware rules with the POLICY_WHATSAPP_WEB_* settings."""
    return WebRules(
        pool=pool,
        warmup=list(settings.policy_whatsapp_web_warmup),
        first_contact_cap=settings.policy_whatsapp_web_first_contact_daily_cap,
        identical_text_cap=settings.policy_whatsapp_web_identical_text_hourly_cap,
        recheck_seconds=settings.policy_pause_recheck_seconds,
        paused_max_age_hours=settings.policy_whatsapp_web_paused_max_age_hours,
        cloud_fallback=settings.policy_whatsapp_web_cloud_fallback,
        cloud_window_hours=settings.policy_whatsapp_cloud_window_hours,
        may_drive=may_drive,
        cloud_for=cloud_for,
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


def _graph_timeout(settings: DispatchSettings) -> httpx.Timeout:
    return httpx.Timeout(
        settings.whatsapp_cloud_timeout_seconds,
        connect=settings.whatsapp_cloud_connect_timeout_seconds,
    )


async def graph_api(settings: DispatchSettings, stack: AsyncExitStack) -> GraphApi:
    """Graph with the account's token over one HTTP client, closed with `stack`."""
    assert settings.whatsapp_cloud_token is not None
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=_graph_timeout(settings)))
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
    settings: DispatchSettings,
    pool: asyncpg.Pool,
    stack: AsyncExitStack,
    companies: CompanyChannels | None = None,
) -> MediaDeps:
    """media.fetch's dependencies: media is downloaded with the company's own token when it has
    a WhatsApp Cloud account, else with the platform's."""
    graph = await graph_api(settings, stack) if settings.whatsapp_cloud_configured else None
    if companies is None:
        companies = await company_channels(settings, pool, stack, platform_graph=graph)
    store = media_store(settings)
    stack.push_async_callback(store.aclose)
    return MediaDeps(
        repo=WhatsAppRepository(pool),
        store=store,
        graph=graph,
        max_bytes=settings.whatsapp_media_max_bytes,
        mime_types=frozenset(settings.whatsapp_media_mime_types),
        graph_for=companies.graph,
    )


def template_sync(settings: DispatchSettings):  # type: ignore[no-untyped-def]
    """The background template sync: the platform's WhatsApp Business Account (with
    WHATSAPP_CLOUD_WABA_ID and credentials) and every company account that names a `waba_id`."""

    async def background(plat: Platform, stopping: asyncio.Event) -> None:
        if settings.whatsapp_template_sync_seconds <= 0:
            return
        async with AsyncExitStack() as stack:
            platform = None
            if settings.whatsapp_cloud_configured and settings.whatsapp_cloud_waba_id is not None:
                platform = SyncTarget(
                    "platform",
                    await graph_api(settings, stack),
                    settings.whatsapp_cloud_waba_id,
                    settings.whatsapp_cloud_phone_id,
                )
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=_graph_timeout(settings))
            )
            targets = AccountSyncTargets(settings, plat.pool, client, platform)
            await sync_loop(
                plat.pool,
                targets,
                settings.whatsapp_template_sync_seconds,
                stopping,
                refresh=settings.channel_accounts_refresh_seconds,
            )

    return background


def backgrounds(settings: DispatchSettings, running: list[WebAccounts]):  # type: ignore[no-untyped-def]
    """The template sync and, with WhatsApp Web, its account supervisor, side by side."""
    sync = template_sync(settings)

    async def background(plat: Platform, stopping: asyncio.Event) -> None:
        tasks = [sync(plat, stopping)] + [web.run(stopping) for web in running]
        await asyncio.gather(*tasks)

    return background


def main() -> None:
    settings = DispatchSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    try:
        settings.link_key()  # signs the unsubscribe and tracking links of every email
    except ValueError as err:
        raise SystemExit(f"dispatch: {err}") from None
    running: list[WebAccounts] = []
    run(
        lambda: run_worker(
            settings,
            SERVICE,
            METRICS_PORT,
            make_handlers(settings, running),
            backgrounds(settings, running),
        )
    )
