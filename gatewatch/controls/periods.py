"""Calendar budget periods (day, week, month, total) in a configured time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["PERIODS", "Window", "window"]

PERIODS = ("day", "week", "month", "total")
_EPOCH = 0.0
_FOREVER = 253402300799.0  # 9999-12-31T23:59:59Z


@dataclass(frozen=True, slots=True)
class Window:
    period: str
    start: float  # Unix seconds, inclusive
    end: float  # Unix seconds, exclusive (when the budget resets)


def window(period: str, now: float, tz: ZoneInfo) -> Window:
    """The period that contains ``now``: weeks start on Monday, all in the zone ``tz``."""
    if period == "total":
        return Window(period, _EPOCH, _FOREVER)
    local = datetime.fromtimestamp(now, tz)
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        end = (start + timedelta(days=1, hours=2)).replace(hour=0)
    elif period == "week":
        day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        start = day - timedelta(days=day.weekday())
        end = (start + timedelta(days=7, hours=2)).replace(hour=0)
    elif period == "month":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, fold=0)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    # re-attach the zone so DST changes inside the period land on local midnight
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    end = end.replace(tzinfo=None).replace(tzinfo=tz)
    return Window(period, start.timestamp(), end.timestamp())
