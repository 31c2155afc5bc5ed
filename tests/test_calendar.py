"""XNYS sessions from pandas-market-calendars: holidays, early closes, DST."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tradeday.calendar import MarketClosed, exchange_today, session_window


@pytest.mark.parametrize(
    ("day", "open_utc", "close_utc", "early"),
    [
        (date(2026, 11, 27), "14:30", "18:00", True),  # day after Thanksgiving: 13:00 ET
        (date(2026, 3, 9), "13:30", "20:00", False),  # first Monday of US DST
        (date(2026, 3, 6), "14:30", "21:00", False),  # the Friday before
        (date(2013, 9, 3), "13:30", "20:00", False),
    ],
)
def test_session_window(day, open_utc, close_utc, early):
    w = session_window(day)
    assert w.open.strftime("%H:%M") == open_utc
    assert w.close.strftime("%H:%M") == close_utc
    assert w.early_close is early
    assert w.open.tzinfo is not None


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (date(2026, 11, 26), "Thanksgiving"),
        (date(2026, 12, 25), "Christmas"),
        (date(2026, 4, 3), "Good Friday"),
        (date(2013, 9, 2), "Labor Day"),
        (date(2026, 11, 22), "Sunday"),
    ],
)
def test_closed_days_name_the_reason(day, reason):
    with pytest.raises(MarketClosed) as exc:
        session_window(day)
    assert str(exc.value) == f"market closed {day.isoformat()} ({reason})"


def test_exchange_today_uses_new_york_date():
    # 02:00 UTC on the 27th is still the 26th in New York
    assert exchange_today(datetime(2026, 11, 27, 2, 0, tzinfo=UTC)) == date(2026, 11, 26)
