"""When the market is open: NYSE (XNYS) sessions from pandas-market-calendars.

Holidays, early closes and DST all come from the exchange calendar; nothing here
hard-codes 09:30 or 16:00.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pandas as pd
import pandas_market_calendars as mcal

from tradeday.events import SessionWindow, datetime_to_ns

EXCHANGE = "XNYS"
EXCHANGE_TZ = ZoneInfo("America/New_York")


class MarketClosed(Exception):
    """The exchange has no session on this day; ``reason`` says why (weekend or the holiday)."""

    def __init__(self, day: date, reason: str) -> None:
        super().__init__(f"market closed {day.isoformat()} ({reason})")
        self.day = day
        self.reason = reason


@cache
def _calendar() -> mcal.MarketCalendar:
    return mcal.get_calendar(EXCHANGE)


def exchange_today(now: datetime | None = None) -> date:
    """The exchange's calendar date right now (a UTC evening is still 'today' in New York)."""
    return (now or datetime.now(tz=EXCHANGE_TZ)).astimezone(EXCHANGE_TZ).date()


def _closed_reason(day: date) -> str:
    if day.weekday() >= 5:
        return day.strftime("%A")
    cal = _calendar()
    ts = pd.Timestamp(day)
    for rule in getattr(cal.regular_holidays, "rules", []):
        if ts in rule.dates(ts, ts):
            return str(rule.name)
    for adhoc in cal.adhoc_holidays:
        if pd.Timestamp(adhoc).date() == day:
            return "special closure"
    return "holiday"


def session_window(day: date) -> SessionWindow:
    """The regular session on ``day``, or :class:`MarketClosed` naming why there is none."""
    schedule = _calendar().schedule(start_date=day, end_date=day)
    if schedule.empty:
        raise MarketClosed(day, _closed_reason(day))
    return _window(day, schedule.iloc[0])


def trading_days(start: date, end: date) -> list[SessionWindow | MarketClosed]:
    """Every weekday from ``start`` to ``end`` (inclusive): its session, or why it has none.

    One schedule query for the whole range (a query per day costs ~30 ms); weekends are
    left out, they are never sessions.
    """
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    schedule = _calendar().schedule(start_date=start, end_date=end)
    by_day = {ts.date(): row for ts, row in schedule.iterrows()}
    days: list[SessionWindow | MarketClosed] = []
    day = start
    while day <= end:
        if day in by_day:
            days.append(_window(day, by_day[day]))
        elif day.weekday() < 5:
            days.append(MarketClosed(day, _closed_reason(day)))
        day += timedelta(days=1)
    return days


def _window(day: date, row: pd.Series) -> SessionWindow:
    open_ts = row["market_open"].to_pydatetime()
    close_ts = row["market_close"].to_pydatetime()
    regular_close = _calendar().close_time  # the usual close, e.g. 16:00 America/New_York
    early = close_ts.astimezone(EXCHANGE_TZ).time() < regular_close.replace(tzinfo=None)
    return SessionWindow(
        day=day,
        open_ns=datetime_to_ns(open_ts),
        close_ns=datetime_to_ns(close_ts),
        early_close=early,
    )
