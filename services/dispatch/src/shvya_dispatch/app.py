"""Wires dispatch: the channel router and the send handler."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack

from shvya_common.bus.worker import Handler
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_dispatch.channels import Channel, ChannelRouter
from shvya_dispatch.channels.log import LogChannel
from shvya_dispatch.handlers import Deps, handle_send
from shvya_dispatch.repository import DispatchRepository
from shvya_dispatch.settings import DispatchSettings

SERVICE = "dispatch"
METRICS_PORT = 9102


def make_handlers(settings: DispatchSettings):  # type: ignore[no-untyped-def]
    async def factory(plat: Platform, stack: AsyncExitStack) -> dict[str, Handler]:
        log_channel = LogChannel(settings.log_channel_file)
        channels: dict[str, Channel] = {"log": log_channel}
        router = ChannelRouter(channels, log_channel, settings.unconfigured_channels)
        deps = Deps(repo=DispatchRepository(plat.pool), router=router)
        return {"dispatch.send": functools.partial(handle_send, deps=deps)}

    return factory


def main() -> None:
    settings = DispatchSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, make_handlers(settings)))
