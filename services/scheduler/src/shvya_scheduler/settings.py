"""Scheduler settings: how often due timers are looked for, and how many at a time; the sweeps
that enqueue quiet-conversation summaries and bump-ups; the outbox's relay and reconciler; email
campaigns' pace; the loop that fires recurring schedules; and retention (queue counters folded,
finished jobs and timers deleted, events archived by month)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from shvya_common.bus.relay import RelayConfig
from shvya_common.retention import RetentionConfig
from shvya_common.settings import CommonSettings
from shvya_scheduler.config import CampaignConfig, ScheduleConfig
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
    feed_tick_seconds: float = Field(
        0.5, gt=0, description="Pause between looks for new events for the reactors."
    )
    feed_batch: int = Field(500, ge=1, le=10_000, description="Events taken per feed pass.")
    relay_interval_seconds: float = Field(
        1.0, gt=0, description="Pause between looks for committed rows whose publish failed."
    )
    relay_grace_seconds: float = Field(
        2.0, ge=0, description="Age before the relay republishes an unconfirmed row."
    )
    relay_batch: int = Field(500, ge=1, le=10_000, description="Rows per relay transaction.")
    reconcile_interval_seconds: float = Field(
        15.0, gt=0, description="Pause between looks for rows stuck with no message in NATS."
    )
    reconcile_horizon_seconds: float = Field(
        120.0,
        gt=0,
        description="A job or send untouched this long, with no live run, is checked against"
        " JetStream and republished if its message is gone.",
    )

    campaign_tick_seconds: float = Field(
        10.0, gt=0, le=3600, description="Pause between a sending campaign's runs."
    )
    campaign_batch_max: int = Field(
        200, ge=1, le=5000, description="Most recipients one campaign run requests sends for."
    )
    campaign_rate_per_minute: int = Field(
        600,
        ge=1,
        le=1_000_000,
        description="Campaign sends per minute per company, across all its campaigns, unless"
        " the company's settings.campaigns.rate_per_minute says otherwise.",
    )
    schedule_tick_seconds: float = Field(
        15.0, gt=0, le=300, description="Pause between looks for due recurring schedules."
    )
    schedule_batch: int = Field(100, ge=1, le=5000, description="Due schedules fired per pass.")
    schedule_summary_batch: int = Field(
        500, ge=1, le=10_000, description="Leads a 'summaries' schedule enqueues per firing."
    )
    schedule_summary_lookback_hours: float = Field(
        24.0,
        gt=0,
        description="A 'summaries' schedule's first firing takes leads active in these hours;"
        " later firings take those active since the previous one.",
    )

    def campaign_config(self) -> CampaignConfig:
        return CampaignConfig(
            tick_seconds=self.campaign_tick_seconds,
            batch_max=self.campaign_batch_max,
            rate_per_minute=self.campaign_rate_per_minute,
        )

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            tick_seconds=self.schedule_tick_seconds,
            batch=self.schedule_batch,
            summary_batch=self.schedule_summary_batch,
            summary_lookback=timedelta(hours=self.schedule_summary_lookback_hours),
        )

    counters_interval_seconds: float = Field(
        1.0, gt=0, description="Pause between folds of the queue counters' deltas."
    )
    retention_interval_seconds: float = Field(
        300.0, gt=0, description="Pause between retention passes."
    )
    retention_jobs_days: int = Field(
        7, ge=0, description="Completed jobs are deleted after this many days (0 = kept)."
    )
    retention_timers_days: int = Field(
        7,
        ge=0,
        description="Fired and cancelled timers are deleted after this many days (0 = kept).",
    )
    retention_events_hot_days: int = Field(
        30,
        ge=0,
        description="Events move to the monthly archive (events_archive) after this many days"
        " (0 = all stay in events).",
    )
    retention_events_archive_months: int = Field(
        0, ge=0, description="Archive months older than this many are dropped (0 = kept)."
    )
    retention_batch: int = Field(
        5000, ge=100, le=100_000, description="Rows per retention statement."
    )

    def retention_config(self) -> RetentionConfig:
        return RetentionConfig(
            jobs_days=self.retention_jobs_days,
            timers_days=self.retention_timers_days,
            events_hot_days=self.retention_events_hot_days,
            events_archive_months=self.retention_events_archive_months,
            batch=self.retention_batch,
        )

    def relay_config(self) -> RelayConfig:
        return RelayConfig(
            interval=self.relay_interval_seconds,
            grace=self.relay_grace_seconds,
            batch=self.relay_batch,
            reconcile_interval=self.reconcile_interval_seconds,
            horizon=self.reconcile_horizon_seconds,
        )

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
