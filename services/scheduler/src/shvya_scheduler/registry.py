"""The scheduler's task registry and what its handlers are given. Each automation module
registers its handler here with `@registry.task(...)`; `app.py` imports those modules (listed in
`shvya_scheduler.tasks`) and binds them with the service's `Deps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shvya_common.bus import JobBus, Registry

if TYPE_CHECKING:
    from shvya_scheduler.settings import SchedulerSettings

registry = Registry("scheduler")


@dataclass(frozen=True)
class Deps:
    bus: JobBus
    settings: SchedulerSettings
