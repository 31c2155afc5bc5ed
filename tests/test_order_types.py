"""Order types in the simulated broker, with exact fills: limits that rest, partial fills
across prints, ioc, and the opening and closing auctions (opg/cls) on a regular day, an
early-close day (2026-11-27, close 13:00 ET) and around a holiday (2026-11-26)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import pytest

from models.base import NO_ORDERS, Model
from models.volume_modulo import VolumeModuloParams
from tradeday import recording as recordings
from tradeday.auctions import AuctionRefused, auction_session
from tradeday.book import Book
from tradeday.brokers.base import BrokerOrder
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.calendar import EXCHANGE_TZ, session_window
from tradeday.config import RiskLimits
from tradeday.engine import Engine
from tradeday.events import Bar, Order, Quote, Side, TimeInForce, Trade, buy, datetime_to_ns
from tradeday.risk import RiskGate

BUY, SELL = Side.BUY, Side.SELL
DAY, IOC, OPG, CLS = TimeInForce.DAY, TimeInForce.IOC, TimeInForce.OPG, TimeInForce.CLS
MIN = 60 * 10**9


def et(day: str, clock: str) -> int:
    """Nanoseconds of a New York wall-clock time."""
    return datetime_to_ns(datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=EXCHANGE_TZ))


def order(cid, side, qty, ts, *, limit=None, tif=DAY, symbol="A"):
    return BrokerOrder(cid, symbol, side, qty, ts, limit, tif)


def drain(broker: SimulatedBroker) -> list[tuple]:
    out = []
    while broker.executions:
        e = broker.executions.popleft()
        out.append((e.client_order_id, e.kind.value, e.ts, e.qty, e.price, e.reason))
    return out


def fills(broker: SimulatedBroker) -> list[tuple]:
    return [(e[0], e[1], e[2], e[3], e[4]) for e in drain(broker) if "fill" in e[1]]


# -- limits --------------------------------------------------------------------------------


def test_a_marketable_limit_fills_at_the_market_and_a_resting_one_at_its_limit():
    b = SimulatedBroker()
    b.on_trade(Trade("A", 1, 10.0, 5))
    b.submit(order("marketable", BUY, 2, 1, limit=10.5))
    b.submit(order("resting", BUY, 3, 1, limit=9.5))
    b.on_trade(Trade("A", 2, 10.0, 5))  # marketable fills at 10.0, better than its limit
    b.on_trade(Trade("A", 3, 9.6, 5))  # not yet at 9.5
    b.on_trade(Trade("A", 4, 9.2, 5))  # through the limit: the resting buy gets 9.5
    assert fills(b) == [("marketable", "fill", 2, 2, 10.0), ("resting", "fill", 4, 3, 9.5)]
    assert b.positions() == {"A": 5}
    assert b.cash == 1_000_000 - 2 * 10.0 - 3 * 9.5


def test_a_resting_sell_limit_fills_on_a_bar_whose_high_reaches_it():
    b = SimulatedBroker()
    b.on_bar(Bar("A", 0, 10.0, 10.2, 9.8, 10.0, 100))
    b.submit(order("sell", SELL, 4, 0, limit=10.5))
    b.on_bar(Bar("A", MIN, 10.1, 10.4, 10.0, 10.3, 100))  # high 10.4: not reached
    b.on_bar(Bar("A", 2 * MIN, 10.3, 10.6, 10.2, 10.4, 100))  # high 10.6: fills at 10.5
    b.submit(order("gap", SELL, 1, 2 * MIN, limit=10.5))
    b.on_bar(Bar("A", 3 * MIN, 10.9, 11.0, 10.8, 10.9, 100))  # opens above: gets the open
    assert fills(b) == [("sell", "fill", 2 * MIN, 4, 10.5), ("gap", "fill", 3 * MIN, 1, 10.9)]


def test_a_resting_buy_limit_fills_when_the_ask_comes_down_to_it():
    b = SimulatedBroker()
    b.on_quote(Quote("A", 1, 9.9, 100, 10.1, 100))
    b.submit(order("bid", BUY, 1, 1, limit=10.0))  # ask 10.1: rests
    b.on_quote(Quote("A", 2, 9.95, 100, 10.05, 100))
    b.on_quote(Quote("A", 3, 9.9, 100, 9.98, 100))  # ask at 9.98 reaches it: fills at 10.0
    assert drain(b) == [
        ("bid", "accepted", 1, 0, 0.0, ""),
        ("bid", "fill", 3, 1, 10.0, ""),
    ]


def test_slippage_never_fills_past_the_limit():
    b = SimulatedBroker(slippage_bps=10)
    b.submit(order("lim", BUY, 1, 0, limit=50.02))
    b.submit(order("mkt", BUY, 1, 0))
    b.on_trade(Trade("A", 1, 50.0, 1))  # 50.0 plus 10 bps is 50.05, past the limit
    assert fills(b) == [("lim", "fill", 1, 1, 50.02), ("mkt", "fill", 1, 1, pytest.approx(50.05))]


# -- partial fills -------------------------------------------------------------------------


def test_an_order_takes_its_share_of_each_print_until_it_is_filled():
    b = SimulatedBroker(max_participation=0.5)
    b.submit(order("o1", BUY, 10, 0))
    for ts, price, size in [(1, 10.0, 4), (2, 10.1, 6), (3, 10.2, 1), (4, 10.3, 10), (5, 9.0, 50)]:
        b.on_trade(Trade("A", ts, price, size))
    assert fills(b) == [
        ("o1", "partial_fill", 1, 2, 10.0),  # half of 4
        ("o1", "partial_fill", 2, 3, 10.1),  # half of 6
        # ts 3: half of 1 is half a share, carried to the next print
        ("o1", "fill", 4, 5, 10.3),  # 5.5 allowed, 5 left
    ]
    assert b.positions() == {"A": 10}
    assert b.cash == pytest.approx(1_000_000 - (2 * 10.0 + 3 * 10.1 + 5 * 10.3))


def test_small_prints_add_up_exactly():
    b = SimulatedBroker(max_participation=0.1)
    b.submit(order("o1", SELL, 2, 0))
    for ts in range(1, 21):
        b.on_trade(Trade("A", ts, 10.0, 1))
    assert [(e[1], e[2], e[3]) for e in fills(b)] == [("partial_fill", 10, 1), ("fill", 20, 1)]


def test_a_resting_limit_fills_partly_at_its_limit_and_flush_cancels_the_rest():
    b = SimulatedBroker(max_participation=0.25)
    b.on_trade(Trade("A", 0, 10.0, 100))
    b.submit(order("lim", BUY, 100, 0, limit=9.0))
    b.on_trade(Trade("A", 1, 9.5, 100))  # first chance: not marketable, rests
    b.on_trade(Trade("A", 2, 8.9, 40))  # through: 10 of 40 at the limit
    b.on_trade(Trade("A", 3, 9.1, 400))  # above the limit again: nothing
    b.flush(4)
    assert drain(b)[1:] == [
        ("lim", "partial_fill", 2, 10, 9.0, ""),
        ("lim", "canceled", 4, 0, 0.0, "limit not reached"),
    ]
    assert b.positions() == {"A": 10}


def test_flush_fills_what_a_market_order_has_left_at_the_last_price():
    b = SimulatedBroker(max_participation=0.5)
    b.submit(order("o1", SELL, 6, 0))
    b.on_trade(Trade("A", 1, 10.0, 4))
    b.flush(2)
    assert fills(b) == [("o1", "partial_fill", 1, 2, 10.0), ("o1", "fill", 2, 4, 10.0)]


def test_buying_power_counts_only_what_is_left_to_fill():
    b = SimulatedBroker(starting_cash=1_000, max_participation=0.5)
    b.on_trade(Trade("A", 0, 10.0, 1))
    b.submit(order("o1", BUY, 80, 0))
    b.on_trade(Trade("A", 1, 10.0, 60))  # 30 filled, 50 left
    assert b.buying_power() == pytest.approx(1_000 - 80 * 10.0)
    b.submit(order("o2", BUY, 21, 1))
    assert drain(b)[-1][1:] == (
        "rejected",
        1,
        0,
        0.0,
        "insufficient buying power: buy 21 A needs 210.00, buying power 200.00",
    )


# -- ioc -----------------------------------------------------------------------------------


def test_ioc_fills_what_the_first_print_allows_and_cancels_the_rest():
    b = SimulatedBroker(latency_ms=1, max_participation=0.5)
    b.submit(order("ioc", BUY, 10, 0, tif=IOC))
    b.on_trade(Trade("A", 500_000, 10.0, 100))  # before the latency: not its chance yet
    b.on_trade(Trade("A", 1_000_000, 10.2, 8))  # its chance: 4 of 8, the rest canceled
    b.on_trade(Trade("A", 2_000_000, 10.4, 100))
    assert drain(b)[1:] == [
        ("ioc", "partial_fill", 1_000_000, 4, 10.2, ""),
        ("ioc", "canceled", 1_000_000, 0, 0.0, "ioc: unfilled remainder canceled"),
    ]


def test_an_ioc_limit_not_marketable_at_once_is_canceled_at_once():
    b = SimulatedBroker()
    b.on_quote(Quote("A", 1, 9.9, 100, 10.1, 100))
    b.submit(order("ioc", BUY, 1, 1, limit=10.0, tif=IOC))  # standing quote: decided now
    b.submit(order("ok", SELL, 1, 1, limit=9.9, tif=IOC))
    assert drain(b) == [
        ("ioc", "accepted", 1, 0, 0.0, ""),
        ("ioc", "canceled", 1, 0, 0.0, "ioc: limit not reached"),
        ("ok", "accepted", 1, 0, 0.0, ""),
        ("ok", "fill", 1, 1, 9.9, ""),
    ]


# -- the opening auction (opg) -------------------------------------------------------------

TUE, THANKSGIVING, FRIDAY = "2026-11-24", "2026-11-26", "2026-11-27"


def test_opg_fills_at_the_first_print_at_or_after_the_open():
    b = SimulatedBroker(slippage_bps=50)  # an auction has one price: no slippage
    b.on_trade(Trade("A", et(TUE, "09:00:00"), 99.0, 10))
    b.submit(order("moo", BUY, 5, et(TUE, "09:00:00"), tif=OPG))
    b.submit(order("loo", SELL, 5, et(TUE, "09:00:00"), limit=101.0, tif=OPG))
    b.on_trade(Trade("A", et(TUE, "09:29:59.999"), 99.5, 10))  # pre-market: not the open
    b.on_quote(Quote("A", et(TUE, "09:30:00"), 99.9, 1, 100.1, 1))  # a quote is no print
    b.on_trade(Trade("A", et(TUE, "09:30:00.250"), 100.0, 3_000))  # the opening print
    b.on_trade(Trade("A", et(TUE, "09:30:01"), 100.5, 10))
    assert drain(b)[2:] == [
        ("moo", "fill", et(TUE, "09:30:00.250"), 5, 100.0, ""),
        (
            "loo",
            "canceled",
            et(TUE, "09:30:00.250"),
            0,
            0.0,
            "opg: limit not reached at the auction price 100.0",
        ),
    ]


def test_opg_on_bars_fills_at_the_first_bars_open():
    b = SimulatedBroker()
    b.submit(order("moo", BUY, 2, et(TUE, "08:00:00"), tif=OPG))
    b.on_bar(Bar("A", et(TUE, "09:29:00"), 50.0, 50.0, 50.0, 50.0, 10))  # pre-market bar
    b.on_bar(Bar("A", et(TUE, "09:30:00"), 51.0, 52.0, 50.5, 51.5, 10_000))
    assert fills(b) == [("moo", "fill", et(TUE, "09:30:00"), 2, 51.0)]


def test_opg_is_refused_between_0928_and_1900_and_queued_for_the_next_open_after():
    b = SimulatedBroker()
    b.submit(order("late", BUY, 1, et(TUE, "09:28:00"), tif=OPG))
    b.submit(order("evening", BUY, 1, et(TUE, "19:00:00"), tif=OPG))  # for Wednesday
    b.submit(order("holiday", SELL, 1, et(THANKSGIVING, "12:00:00"), tif=OPG))  # for Friday
    b.on_trade(Trade("A", et("2026-11-25", "09:30:00"), 20.0, 1))
    b.on_trade(Trade("A", et(FRIDAY, "09:30:05"), 21.0, 1))
    assert drain(b) == [
        (
            "late",
            "rejected",
            et(TUE, "09:28:00"),
            0,
            0.0,
            "opg order sent at 09:28:00 ET on 2026-11-24: opg orders must be sent before 09:28 "
            "ET for that day's auction, or from 19:00 ET for the next session's",
        ),
        ("evening", "accepted", et(TUE, "19:00:00"), 0, 0.0, ""),
        ("holiday", "accepted", et(THANKSGIVING, "12:00:00"), 0, 0.0, ""),
        ("evening", "fill", et("2026-11-25", "09:30:00"), 1, 20.0, ""),
        ("holiday", "fill", et(FRIDAY, "09:30:05"), 1, 21.0, ""),
    ]


def test_opg_without_an_opening_print_is_canceled_with_the_reason():
    b = SimulatedBroker()
    b.submit(order("moo", BUY, 1, et(TUE, "09:00:00"), tif=OPG, symbol="B"))
    b.on_trade(Trade("A", et(TUE, "09:30:00"), 10.0, 1))  # another symbol opens
    b.flush(et(TUE, "10:00:00"))
    assert drain(b)[1][1:] == (
        "canceled",
        et(TUE, "10:00:00"),
        0,
        0.0,
        "opg: the data ended before the open of 2026-11-24",
    )


# -- the closing auction (cls) -------------------------------------------------------------


def test_cls_fills_at_the_last_regular_hours_print_once_a_later_one_shows_it():
    b = SimulatedBroker(commission_per_share=0.01)
    b.on_trade(Trade("A", et(TUE, "15:00:00"), 100.0, 10))
    b.submit(order("moc", BUY, 10, et(TUE, "15:00:00"), tif=CLS))
    b.on_trade(Trade("A", et(TUE, "15:59:59.900"), 101.25, 10))  # the last regular print
    assert fills(b) == []  # not known to be the last yet
    b.on_trade(Trade("A", et(TUE, "16:00:00.100"), 101.5, 10))  # after hours
    assert fills(b) == [("moc", "fill", et(TUE, "16:00:00"), 10, 101.25)]
    assert b.cash == pytest.approx(1_000_000 - 1012.5 - 0.1)


def test_cls_respects_the_early_close_on_trades():
    b = SimulatedBroker()
    b.on_trade(Trade("A", et(FRIDAY, "12:00:00"), 50.0, 1))
    b.submit(order("moc", SELL, 3, et(FRIDAY, "12:49:59"), tif=CLS))
    b.submit(order("late", SELL, 3, et(FRIDAY, "12:50:00"), tif=CLS))  # cutoff 12:50
    b.on_trade(Trade("A", et(FRIDAY, "12:59:59"), 50.75, 1))
    b.on_trade(Trade("A", et(FRIDAY, "13:00:00"), 51.0, 1))  # the close itself is after hours
    assert drain(b) == [
        ("moc", "accepted", et(FRIDAY, "12:49:59"), 0, 0.0, ""),
        (
            "late",
            "rejected",
            et(FRIDAY, "12:50:00"),
            0,
            0.0,
            "cls order sent at 12:50:00 ET on 2026-11-27: cls orders must be sent before 12:50 "
            "ET for that day's auction, or from 19:00 ET for the next session's",
        ),
        ("moc", "fill", et(FRIDAY, "13:00:00"), 3, 50.75, ""),
    ]


def test_cls_on_bars_fills_at_the_close_of_the_bar_that_ends_at_the_close():
    b = SimulatedBroker()
    b.submit(order("moc", BUY, 1, et(FRIDAY, "10:00:00"), tif=CLS))
    b.submit(order("loc", BUY, 1, et(FRIDAY, "10:00:00"), limit=60.0, tif=CLS))
    b.on_bar(Bar("A", et(FRIDAY, "12:58:00"), 60.0, 60.5, 59.5, 60.2, 100))
    assert fills(b) == []
    b.on_bar(Bar("A", et(FRIDAY, "12:59:00"), 60.2, 60.4, 60.0, 60.3, 100))  # ends 13:00
    assert drain(b) == [
        ("moc", "fill", et(FRIDAY, "13:00:00"), 1, 60.3, ""),
        (
            "loc",
            "canceled",
            et(FRIDAY, "13:00:00"),
            0,
            0.0,
            "cls: limit not reached at the auction price 60.3",
        ),
    ]


def test_cls_when_the_data_ends_before_the_close_is_canceled_not_filled_early():
    b = SimulatedBroker()
    b.submit(order("moc", BUY, 1, et(TUE, "10:00:00"), tif=CLS))
    b.on_trade(Trade("A", et(TUE, "15:55:00"), 10.0, 1))  # a session stopping 5 min early
    b.flush(et(TUE, "15:55:00"))
    assert drain(b)[1][1:] == (
        "canceled",
        et(TUE, "15:55:00"),
        0,
        0.0,
        "cls: the data ended before the close of 2026-11-24",
    )
    done = SimulatedBroker()
    done.submit(order("moc", BUY, 1, et(TUE, "10:00:00"), tif=CLS))
    done.on_trade(Trade("A", et(TUE, "15:59:00"), 10.0, 1))
    done.flush(et(TUE, "16:00:00"))  # the clock reached the close: 15:59 was the last print
    assert fills(done) == [("moc", "fill", et(TUE, "16:00:00"), 1, 10.0)]


def test_auction_sessions_follow_the_calendar():
    friday = auction_session(CLS, et(FRIDAY, "09:00:00"))
    assert (friday.day.isoformat(), friday.close_ns) == (FRIDAY, et(FRIDAY, "13:00:00"))
    after_close = auction_session(OPG, et("2026-11-25", "19:30:00"))  # Wed evening
    assert after_close.day.isoformat() == FRIDAY  # Thursday is Thanksgiving
    with pytest.raises(AuctionRefused, match="cls orders must be sent before 15:50 ET"):
        auction_session(CLS, et(TUE, "15:50:00"))


# -- through the engine, on a bundled recording --------------------------------------------


class _BuysAtTheClose(Model):
    """A test model: one cls buy at its first bar."""

    params_class = VolumeModuloParams

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        if getattr(self, "sent", False):
            return NO_ORDERS
        self.sent = True
        return (buy(bar.symbol, 10, tif=CLS),)


def test_a_cls_order_from_a_model_fills_at_the_close_of_the_recorded_last_bar():
    day = date(2023, 1, 3)
    window = session_window(day)
    path = recordings.bundled(day)
    table = recordings.load(path, ["AAPL"], window.open_ns, window.close_ns, ["b"])
    bars = [event for _, event in recordings.events(table)]
    book = Book(1e6)
    engine = Engine(
        "r1",
        _BuysAtTheClose(VolumeModuloParams(), ["AAPL"]),
        SimulatedBroker(1e6),
        RiskGate(RiskLimits(), book),
        book,
        model_name="test",
        stop_at_ns=window.close_ns,
    )
    for bar in bars:
        engine.on_events((bar,))
    batch = engine.take_batch()
    last = bars[-1]
    assert last.ts == window.close_ns - MIN  # the 15:59 bar ends at the close
    assert [(o.side, o.qty, o.ts) for o in batch.new_orders] == [("buy", 10, bars[0].ts)]
    assert [(f.qty, f.price, f.ts) for f in batch.fills] == [(10, last.close, window.close_ns)]
    assert book.open_positions() == {"AAPL": 10}
