"""Scheduler settings: how often due timers are looked for, and how many at a time; and the
sweeps that enqueue quiet-conversation summaries and bump-ups."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from shvya_common.settings import CommonSettings
from shvya_scheduler.sweeps import SweepConfig


class SchedulerSettings(CommonSettings):
    tick_seconds: float = Field(0.5, gt=0, description="Pause between looks for due timers.")
    timer_batch: int = Field(200, ge=1, le=5000, description="Timers claimed per transaction.")
    sweep_interval_seconds: float = Field(
        60.0, gt=0, description="Pause between sweeps for quiet conversations and silent leads."
    )
    sweep_batch: int = Field(500, ge=1, le=10_000, description="Leads enqueued per sweep, each.")
    summary_quiet_minutes: float = Field(
        60.0, ge=0, description="Summarise a conversation quiet this long; 0 turns it off."
    )
    summary_lookback_hours: float = Field(
        72.0, gt=0, description="Conversations quiet for longer than this are left alone."
    )
    bumpup_silent_days: float = Field(
        3.0, ge=0, description="Bump a lead silent this long after our message; 0 turns it off."
    )
    bumpup_max: int = Field(3, ge=0, description="Bump-ups sent in a row without a reply.")

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(
            interval_seconds=self.sweep_interval_seconds,
            batch=self.sweep_batch,
            summary_quiet=timedelta(minutes=self.summary_quiet_minutes)
            if self.summary_quiet_minutes
            else None,
            summary_lookback=timedelta(hours=self.summary_lookback_hours),
            bumpup_silent=timedelta(days=self.bumpup_silent_days)
            if self.bumpup_silent_days
            else None,
            bumpup_max=self.bumpup_max,
        )
