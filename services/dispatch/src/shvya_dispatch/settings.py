"""Dispatch settings: which channels are live and how unconfigured ones behave."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shvya_common.settings import CommonSettings


class DispatchSettings(CommonSettings):
    unconfigured_channels: Literal["log", "fail"] = Field(
        "log",
        description="A send on a channel with no credentials: record it on the log channel "
        "(status 'logged', so the embedded default closes the loop) or fail permanently.",
    )
    log_channel_file: Path | None = Field(
        None, description="Also append each log-channel send to this JSON-lines file."
    )
