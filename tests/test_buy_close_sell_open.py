"""The seed's buy-at-the-close, sell-at-the-next-open model over consecutive bundled bar
days (a weekend and Martin Luther King Day among them): every night's P&L is the quantity
times the next session's open less the day's close, both read here straight from the
recording with pyarrow, not through tradeday."""

from __future__ import annotations

from datetime import date, datetime, time
from itertools import pairwise
from zoneinfo import ZoneInfo

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tradeday import backtest
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
        {"name": "buy_close_sell_open", "shares": SHARES, "max_overnight_position": SHARES},
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
        tags = {o["client_order_id"]: o["tag"] for o in session.orders}
        got = [
            (tags[f["client_order_id"]], f["symbol"], f["side"], f["qty"], f["price"], f["ts"])
            for f in session.fills
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
            local = order["time"].astimezone(NEW_YORK).time()
            # opg before 09:28 (sent at the 09:25 start), cls before 15:50 (at the first bar)
            assert local == (time(9, 25) if order["tag"] == "open" else time(9, 30)), order


def test_a_single_session_still_ends_flat():
    day = backtest.run(
        {"name": "buy_close_sell_open"}, SESSIONS[0], ["AAPL"], close_buffer_minutes=0
    )
    assert day.book.open_positions() == {}
    assert [(o["tag"], o["status"]) for o in day.orders] == [
        ("close", "filled"),
        ("flatten", "filled"),
    ]


def test_it_must_be_allowed_to_hold_what_it_buys():
    with pytest.raises(
        ConfigError, match="max_overnight_position \\(5\\) must be at least shares \\(10\\)"
    ):
        backtest.run(
            {"name": "buy_close_sell_open", "shares": 10, "max_overnight_position": 5},
            SESSIONS[0],
            ["AAPL"],
        )
