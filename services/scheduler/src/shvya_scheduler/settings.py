"""Scheduler settings: how often due timers are looked for, and how many at a time."""

from __future__ import annotations

from pydantic import Field

from shvya_common.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    tick_seconds: float = Field(0.5, gt=0, description="Pause between looks for due timers.")
    timer_batch: int = Field(200, ge=1, le=5000, description="Timers claimed per transaction.")
