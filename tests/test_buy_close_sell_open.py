"""The seed's buy-at-the-close, sell-at-the-next-open model over consecutive bundled bar
days (a weekend and Martin Luther King Day among them): every night's P&L is the
quantity times the next session's open less the day's close, both read here straight
from the recording with pyarrow, not through tradeday. And over Thanksgiving 2026, with
its holiday and early close, on a recording built in the test."""

from __future__ import annotations

from datetime import date, datetime, time
from itertools import pairwise
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tradeday import backtest
from tradeday import recording as recordings
from tradeday.config import ConfigError
from tradeday.recording import RECORDINGS_DIR

NEW_YORK = ZoneInfo("America/New_York")
SESSIONS = [date(2023, 1, d) for d in (11, 12, 13, 17, 18)]  # 14-16: weekend and MLK Day
SYMBOLS = ["AAPL", "MSFT"]
SHARES = 7


def ns(day: date, clock: time) -> int:
    return int(datetime.combine(day, clock, NEW_YORK).timestamp()) * 10**9


def open_and_close(symbol: str, day: date) -> tuple[float, float]:
    """The 09:30 bar's open and the 15:59 bar's close (Alpaca labels bars at their start)."""
    bars = pq.read_table(RECORDINGS_DIR / "bars-2023-01.parquet")
    bars = bars.filter(pc.equal(bars["symbol"], symbol))
    by_ts = dict(
        zip(
            bars["ts"].to_pylist(),
            zip(bars["open"].to_pylist(), bars["close"].to_pylist(), strict=True),
            strict=True,
        )
    )
    return by_ts[ns(day, time(9, 30))][0], by_ts[ns(day, time(15, 59))][1]


@pytest.fixture(scope="module")
def result() -> backtest.MultiDayResult:
    return backtest.run_days(
        {"name": "buy_close_sell_open", "close_shares": SHARES, "max_overnight_position": SHARES},
        SESSIONS[0],
        SESSIONS[-1],
        SYMBOLS,
        close_buffer_minutes=0,  # the session runs to the close: the 15:59 bar fills the cls
    )


def test_every_night_earns_the_gap_from_the_close_to_the_next_open(result):
    assert [r.window.day for r in result.days] == SESSIONS
    expected = []
    for day, after in pairwise(SESSIONS):
        for symbol in SYMBOLS:
            close = open_and_close(symbol, day)[1]
            next_open = open_and_close(symbol, after)[0]
            expected.append(
                (day, after, symbol, SHARES, pytest.approx(SHARES * (next_open - close)))
            )
    assert result.nights() == expected


def test_fills_are_the_auction_prints_at_their_times(result):
    for i, session in enumerate(result.days):
        day = session.window.day
        wanted = []
        for symbol in SYMBOLS:
            day_open, day_close = open_and_close(symbol, day)
            if i:  # carried in from the session before: sold in the opening auction
                wanted.append(("open", symbol, "sell", SHARES, day_open, ns(day, time(9, 30))))
            wanted.append(("close", symbol, "buy", SHARES, day_close, ns(day, time(16, 0))))
        tags = {o.client_order_id: o.tag for o in session.orders}
        got = [
            (tags[f.client_order_id], f.symbol, f.side, f.qty, f.price, f.ts) for f in session.fills
        ]
        assert sorted(got) == sorted(wanted), day
        assert session.carried == {
            s: (
                SHARES,
                pytest.approx(open_and_close(s, day)[1]),
                pytest.approx(open_and_close(s, day)[1]),
            )
            for s in SYMBOLS
        }


def test_orders_meet_alpacas_auction_cutoffs(result):
    for session in result.days:
        for order in session.orders:
            local = order.time.astimezone(NEW_YORK).time()
            # opg before 09:28 (sent at the 09:25 start), cls before 15:50 (at the first bar)
            assert local == (time(9, 25) if order.tag == "open" else time(9, 30)), order


def test_a_single_session_still_ends_flat():
    day = backtest.run(
        {"name": "buy_close_sell_open"}, SESSIONS[0], ["AAPL"], close_buffer_minutes=0
    )
    assert day.book.open_positions() == {}
    assert [(o.tag, o.status) for o in day.orders] == [
        ("close", "filled"),
        ("flatten", "filled"),
    ]


def test_it_must_be_allowed_to_hold_what_it_buys():
    with pytest.raises(
        ConfigError, match="max_overnight_position \\(5\\) must be at least close_shares \\(10\\)"
    ):
        backtest.run(
            {"name": "buy_close_sell_open", "close_shares": 10, "max_overnight_position": 5},
            SESSIONS[0],
            ["AAPL"],
        )


def test_thanksgiving_week_the_early_close_and_the_holiday(tmp_path):
    """A recording built here: minute bars of XYZ on Wednesday 2026-11-25 (closes 16:00) and
    Friday 2026-11-27 (closes 13:00); Thursday is Thanksgiving."""
    rows = []
    for day, last in ((date(2026, 11, 25), time(15, 59)), (date(2026, 11, 27), time(12, 59))):
        ts, end = ns(day, time(9, 30)), ns(day, last)
        base = 100.0 if day.day == 25 else 103.0
        while ts <= end:
            minute = (ts - ns(day, time(9, 30))) // (60 * 10**9)
            price = base + minute / 100
            rows.append(
                {
                    "ts": ts,
                    "symbol": "XYZ",
                    "kind": "b",
                    "open": price,
                    "high": price + 0.05,
                    "low": price - 0.05,
                    "close": price + 0.01,
                    "volume": 100,
                }
            )
            ts += 60 * 10**9
    path = recordings.write(pa.Table.from_pylist(rows), tmp_path / "thanksgiving.parquet")
    result = backtest.run_days(
        {"name": "buy_close_sell_open", "close_shares": 3},
        "2026-11-25",
        "2026-11-27",
        ["XYZ"],
        recording=path,
        close_buffer_minutes=0,
    )
    wed, fri = result.days
    assert (wed.window.day, fri.window.day, fri.window.early_close) == (
        date(2026, 11, 25),
        date(2026, 11, 27),
        True,
    )
    wed_close = 100.0 + 389 / 100 + 0.01  # the 15:59 bar, the 390th of the day
    fri_open = 103.0
    fri_close = 103.0 + 209 / 100 + 0.01  # the 12:59 bar, the 210th
    assert [(f.side, f.qty, f.price, f.ts) for f in wed.fills] == [
        ("buy", 3, pytest.approx(wed_close), ns(date(2026, 11, 25), time(16, 0)))
    ]
    assert [(f.side, f.qty, f.price, f.ts) for f in fri.fills] == [
        ("sell", 3, fri_open, ns(date(2026, 11, 27), time(9, 30))),
        ("buy", 3, pytest.approx(fri_close), ns(date(2026, 11, 27), time(13, 0))),
    ]
    assert result.nights() == [
        (
            date(2026, 11, 25),
            date(2026, 11, 27),
            "XYZ",
            3,
            pytest.approx(3 * (fri_open - wed_close)),
        )
    ]
