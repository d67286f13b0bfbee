"""The plain configuration the campaign runs and the schedule loop take (built from
`SchedulerSettings`, so tests can pass their own without the environment)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class CampaignConfig:
    tick_seconds: float = 10.0
    batch_max: int = 200
    rate_per_minute: int = 600


@dataclass(frozen=True)
class ScheduleConfig:
    tick_seconds: float = 15.0
    batch: int = 100
    summary_batch: int = 500
    summary_lookback: timedelta = timedelta(hours=24)
