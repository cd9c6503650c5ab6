"""Local time: stored in UTC, shown and reasoned about (tariff dates, cycles) in Asia/Shanghai."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")


def local_date(at: dt.datetime) -> dt.date:
    """The Asia/Shanghai calendar date of an aware UTC moment."""
    if at.tzinfo is None:
        raise ValueError("need an aware datetime")
    return at.astimezone(LOCAL_TZ).date()


def cycle_start(on: dt.date, start_month: int) -> dt.date:
    """First day of the yearly tier cycle (from the 1st of ``start_month``) holding ``on``."""
    start = dt.date(on.year, start_month, 1)
    return start if on >= start else dt.date(on.year - 1, start_month, 1)


def local_midnight_utc(day: dt.date) -> dt.datetime:
    """The UTC moment at which ``day`` begins in Asia/Shanghai."""
    return dt.datetime.combine(day, dt.time(), LOCAL_TZ).astimezone(dt.UTC)
