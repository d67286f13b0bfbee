"""A worker process whose handler kills its own process: proves a job that crashes its worker
every time still ends in the dead-letter queue instead of looping forever."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack

from shvya_common.bus.worker import Handler, JobContext
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run_worker
from shvya_common.settings import CommonSettings
from tests import tasks


async def crash(params: object, job: JobContext) -> None:
    os._exit(17)  # as abrupt as kill -9: no ack, no nak, no cleanup


async def handlers(plat: Platform, stack: AsyncExitStack) -> dict[str, Handler]:
    return {"test.work": crash}


def main() -> None:
    tasks.register()
    settings = CommonSettings()
    configure_logging("crashy", "info", "json")
    asyncio.run(run_worker(settings, "crashy", settings.metrics_port, handlers))


if __name__ == "__main__":
    main()
