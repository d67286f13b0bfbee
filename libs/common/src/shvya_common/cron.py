"""Cron expressions in a time zone: when a recurring schedule fires next (`croniter`).

An expression is read on the wall clock of a zone ("0 9 * * 1-5" is 09:00 on weekdays where the
company is), and each time it names becomes an instant through `zoneinfo`, so a DST change
moves the UTC instant, never the local time. The two hours a year the wall clock skips or
repeats follow the rules most cron daemons (cronie, ISC cron) use:

- a time that does not exist (02:30 on a spring-forward night) fires once, shifted later by the
  length of the gap (03:30), as `java.time` resolves it;
- a time that happens twice (01:30 on a fall-back night) fires once, at its first occurrence,
  unless the hour field is a wildcard or a step ("*/15 * * * *", "0 * * * *"): those fire in
  both passes of the repeated hour, so an hourly job never has a two-hour hole.

    next_fire("0 9 * * *", "America/New_York", after=datetime.now(UTC))

Only the five standard fields and the `@hourly`-style macros are accepted: a sixth (seconds)
field would be finer than the schedule loop looks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

# Local clocks shift by at most this much (DST is an hour; Lord Howe's half hour, historic
# double summer time two hours): enough look-behind to find the second pass of a repeated hour.
_MAX_SHIFT: Final = timedelta(hours=3)
_MAX_CANDIDATES: Final = 5000
MACROS: Final = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_MACRO_HOURS: Final = {"@hourly": "*"}


class CronError(ValueError):
    """An expression that does not parse, names no time that ever comes, or an unknown zone."""


def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    """The zone called `name`, else `fallback`, else UTC (a bad name never stops a schedule)."""
    for candidate in (name, fallback):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def check_zone(name: str) -> str:
    """`name` if it is a known IANA zone; raises CronError otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise CronError(f"unknown time zone {name!r}") from err
    return name


def check_expression(expression: str) -> str:
    """The expression, normalised (single spaces); raises CronError with the reason."""
    text = " ".join(expression.split())
    if text.lower() in MACROS:
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise CronError(
            f"a cron expression has 5 fields (minute hour day month weekday), not {len(fields)}"
        )
    try:
        croniter(text, datetime(2000, 1, 1))
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as err:
        raise CronError(f"not a valid cron expression: {err}") from err
    return text


def _hour_field(expression: str) -> str:
    if expression.startswith("@"):
        return _MACRO_HOURS.get(expression, "0")
    return expression.split(" ")[1]


def _instants(naive: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the wall time `naive` happens in `tz` (0, 1 or 2 of them;
    a skipped time is shifted later by the gap)."""
    found: list[datetime] = []
    for fold in (0, 1) if both_folds else (0,):
        instant = naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == naive and instant not in found:
            found.append(instant)
    if not found:  # in a spring-forward gap: the pre-transition offset lands after the gap
        found.append(naive.replace(tzinfo=tz, fold=0).astimezone(UTC))
    return found


def next_fire(expression: str, timezone: str | ZoneInfo, *, after: datetime) -> datetime:
    """The first instant strictly after `after` (aware) at which `expression` fires on the wall
    clock of `timezone`, in UTC. Raises CronError if it never fires."""
    text = check_expression(expression)
    tz = timezone if isinstance(timezone, ZoneInfo) else zone(timezone)
    both_folds = "*" in _hour_field(text)
    start = after.astimezone(tz).replace(tzinfo=None) - _MAX_SHIFT
    try:
        walk = croniter(text, start)
        best: datetime | None = None
        for _ in range(_MAX_CANDIDATES):
            naive: datetime = walk.get_next(datetime)
            instants = _instants(naive, tz, both_folds)
            for instant in instants:
                if instant > after and (best is None or instant < best):
                    best = instant
            # Later wall times can only map to later instants once past the largest shift.
            if best is not None and instants[0] - _MAX_SHIFT > best:
                return best
        if best is not None:
            return best
    except CroniterBadDateError as err:
        raise CronError(f"{text!r} never fires") from err
    raise CronError(f"{text!r} fires too rarely to schedule")


def upcoming(
    expression: str, timezone: str | ZoneInfo, *, after: datetime, count: int
) -> list[datetime]:
    """The next `count` firings after `after`, in UTC."""
    out: list[datetime] = []
    moment = after
    for _ in range(count):
        moment = next_fire(expression, timezone, after=moment)
        out.append(moment)
    return out
