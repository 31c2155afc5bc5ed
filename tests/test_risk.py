"""Each risk limit refuses exactly the orders that cross it, and every refusal is recorded.

The gate runs inside the real engine with the simulated broker and book; the model is a
script of orders per tick (a test double standing in for a model, nothing else is fake).
Time is tick time: the rate limit is tested with timestamps, never with sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date
from typing import Any

import pytest

from flows.session import trading_session
from models.base import NO_ORDERS, Model
from models.volume_modulo import VolumeModuloParams
from tradeday import backtest
from tradeday.book import Book
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import RiskLimits, parse_session_config
from tradeday.engine import Engine
from tradeday.events import NS_PER_S, Order, Side, Trade, buy, sell
from tradeday.ledger import Ledger
from tradeday.risk import RiskGate

S = NS_PER_S
LOOSE = {
    "max_order_qty": 1_000_000,
    "max_position": 1_000_000,
    "max_gross_notional": 1e12,
    "capital": 1e12,
    "max_orders_per_minute": 1_000_000,
    "max_daily_loss": 1e12,
}


class Scripted(Model):
    """Returns the scripted orders at the given tick times; records when it was asked."""

    params_class = VolumeModuloParams

    def __init__(self, script: dict[int, Sequence[Order]]) -> None:
        super().__init__(VolumeModuloParams(), ["A", "B"])
        self.script = script
        self.asked: list[int] = []

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        self.asked.append(trade.ts)
        return self.script.pop(trade.ts, NO_ORDERS)


def make(script: dict[int, Sequence[Order]], latency_ms: float = 0.0, **limits: Any) -> Engine:
    book = Book(1e9)
    gate = RiskGate(RiskLimits(**{**LOOSE, **limits}), book)
    broker = SimulatedBroker(1e9, latency_ms=latency_ms)
    return Engine("r1", Scripted(script), broker, gate, book, model_name="scripted")


def play(engine: Engine, ticks: Sequence[tuple[int, float] | tuple[int, float, str]]) -> None:
    for tick in ticks:
        ts, price, symbol = (*tick, "A")[:3]
        engine.on_events([Trade(symbol, ts, price, 1)])


def outcome(engine: Engine) -> tuple[list[tuple], list[tuple]]:
    """(sent orders, refused orders) as (ts, symbol, side, qty[, reason])."""
    batch = engine.take_batch()
    sent = [(o.ts, o.symbol, o.side, o.qty) for o in batch.new_orders]
    refused = [(e.ts, e.symbol, e.side, e.qty, e.reason) for e in batch.risk_events]
    return sent, refused


def test_max_order_qty_refuses_only_the_oversized_order():
    eng = make({1: [buy("A", 10)], 2: [buy("A", 11)], 3: [sell("A", 10)]}, max_order_qty=10)
    play(eng, [(1, 100.0), (2, 100.0), (3, 100.0), (4, 100.0)])
    sent, refused = outcome(eng)
    assert sent == [(1, "A", "buy", 10), (3, "A", "sell", 10)]
    assert refused == [(2, "A", "buy", 11, "max_order_qty: quantity 11 > 10")]
    assert eng.risk.counts == {"max_order_qty": 1}
    assert eng.stats.risk_rejections == 1


def test_max_position_counts_orders_in_flight_and_lets_a_position_shrink():
    # 1 s of latency: nothing fills during the script, so in-flight orders must count
    script = {
        1: [buy("A", 10), buy("A", 10), buy("A", 6)],  # 10, 20, 26 > 25: refused
        2: [buy("A", 5)],  # 25: allowed, at the limit
        3: [sell("A", 60)],  # -35: crosses the limit on the other side
        4: [sell("A", 50)],  # -25
        5: [sell("A", 1)],  # -26: refused
    }
    eng = make(script, latency_ms=1_000, max_position=25)
    play(eng, [(t, 100.0) for t in range(1, 6)])
    sent, refused = outcome(eng)
    assert sent == [
        (1, "A", "buy", 10),
        (1, "A", "buy", 10),
        (2, "A", "buy", 5),
        (4, "A", "sell", 50),
    ]
    assert refused == [
        (1, "A", "buy", 6, "max_position: position 26 would exceed 25"),
        (3, "A", "sell", 60, "max_position: position -35 would exceed 25"),
        (5, "A", "sell", 1, "max_position: position -26 would exceed 25"),
    ]
    play(eng, [(2 * S, 100.0)])  # a second later every order has filled
    assert eng.book.qty("A") == -25


def test_after_a_long_ledger_outage_only_orders_that_reduce_a_position_pass():
    script = {
        1: [buy("A", 10)],
        2: [buy("A", 5)],  # the ledger has refused writes for exactly the limit: allowed
        3: [sell("A", 4), buy("A", 1)],  # past the limit: the sell reduces, the buy grows
        4: [buy("A", 1)],  # the ledger took the rows again
    }
    eng = make(script, max_ledger_outage_minutes=5)
    play(eng, [(1, 100.0)])
    eng.risk.ledger_outage_s = 5 * 60
    play(eng, [(2, 100.0)])
    eng.risk.ledger_outage_s = 5 * 60 + 1
    play(eng, [(3, 100.0)])
    eng.risk.ledger_outage_s = 0.0
    play(eng, [(4, 100.0), (5, 100.0)])
    sent, refused = outcome(eng)
    assert sent == [
        (1, "A", "buy", 10),
        (2, "A", "buy", 5),
        (3, "A", "sell", 4),
        (4, "A", "buy", 1),
    ]
    assert refused == [
        (
            3,
            "A",
            "buy",
            1,
            "max_ledger_outage_minutes: the ledger has refused writes for 5.0 min: "
            "only orders that reduce a position",
        )
    ]
    assert eng.book.qty("A") == 12


def test_max_gross_notional_sums_every_symbol_at_its_mark():
    script = {
        1: [buy("A", 10)],  # A: 10 x 100 = 1,000
        2: [sell("B", 20)],  # B: 20 x 50 = 1,000 short; gross 2,000
        3: [buy("A", 5)],  # gross 2,500: at the limit, allowed
        4: [buy("A", 1)],  # 2,600 > 2,500: refused
        5: [buy("B", 1)],  # covering a short lowers gross: allowed
        6: [buy("A", 1)],  # 2,550: refused
    }
    eng = make(script, max_gross_notional=2_500)
    play(eng, [(1, 100.0), (2, 50.0, "B"), (3, 100.0), (4, 100.0), (5, 50.0, "B"), (6, 100.0)])
    sent, refused = outcome(eng)
    assert sent == [
        (1, "A", "buy", 10),
        (2, "B", "sell", 20),
        (3, "A", "buy", 5),
        (5, "B", "buy", 1),
    ]
    assert refused == [
        (4, "A", "buy", 1, "max_gross_notional: gross 2,600.00 would exceed 2,500.00"),
        (6, "A", "buy", 1, "max_gross_notional: gross 2,550.00 would exceed 2,500.00"),
    ]


def test_capital_shrinks_with_the_days_losses():
    script = {
        1: [buy("A", 10)],  # 1,000 of 2,000 capital; fills at the next print, 100
        3: [buy("A", 10)],  # at 90: net -100, budget 1,900; gross 1,800: allowed
        5: [buy("A", 1)],  # gross 1,890 <= 1,900: allowed
        7: [buy("A", 1)],  # gross 1,980 > 1,900: refused
        8: [sell("A", 21)],  # getting out is always allowed
    }
    eng = make(script, capital=2_000)
    play(eng, [(1, 100.0), (2, 100.0), (3, 90.0), (4, 90.0), (5, 90.0), (6, 90.0)])
    play(eng, [(7, 90.0), (8, 90.0), (9, 90.0)])
    sent, refused = outcome(eng)
    assert [s[0] for s in sent] == [1, 3, 5, 8]
    assert refused == [
        (
            7,
            "A",
            "buy",
            1,
            "capital: gross 1,980.00 would exceed allocated capital plus the day's P&L (1,900.00)",
        )
    ]
    assert eng.book.open_positions() == {}


def test_orders_per_minute_on_tick_time():
    at = [0, 10 * S, 20 * S, 30 * S, 60 * S - 1, 60 * S, 60 * S + S // 2, 71 * S]
    eng = make({t + 1: [buy("A", 1)] for t in at}, max_orders_per_minute=3)
    play(eng, [(t + 1, 100.0) for t in at])
    sent, refused = outcome(eng)
    # a minute after the first order (exclusive) it no longer counts; tick time only
    assert [s[0] - 1 for s in sent] == [0, 10 * S, 20 * S, 60 * S, 71 * S]
    assert [r[0] - 1 for r in refused] == [30 * S, 60 * S - 1, 60 * S + S // 2]
    assert {r[4] for r in refused} == {
        "max_orders_per_minute: 3 orders in the last minute (limit 3)"
    }
    assert eng.risk.counts == {"max_orders_per_minute": 3}


def test_kill_switch_flattens_at_once_and_stops_the_model():
    script = {1: [buy("A", 10)], 5: [buy("A", 1)]}
    eng = make(script, max_daily_loss=50)
    # fill at 100; 95 is -50 (not below the limit); 94.9 is -51: kill switch
    play(eng, [(1, 100.0), (2, 100.0), (3, 95.0), (4, 94.9), (5, 94.0), (6, 93.0)])
    sent, refused = outcome(eng)
    assert sent == [(1, "A", "buy", 10), (4, "A", "sell", 10)]  # the flatten, at tick 4
    assert eng.model.asked == [1, 2, 3]  # never asked again after the trip
    assert refused == [
        (4, "", "", 0, "kill switch: max_daily_loss: net -51.00 is below -50.00"),
    ]
    assert eng.stop_requested.is_set()
    assert eng.stop_reason == "kill switch: max_daily_loss: net -51.00 is below -50.00"
    assert eng.book.open_positions() == {}
    assert eng.book.position("A").realized == pytest.approx(-60.0)  # sold at the next print, 94
    # anything else asked of the gate today is refused, with the reason of the trip
    assert eng.risk.check(buy("A", 1), 94.0, 7) == (
        "halted: max_daily_loss: net -51.00 is below -50.00"
    )


class CountedChecks(RiskGate):
    """A real gate that counts its loss checks."""

    checks = 0

    def check_loss(self) -> bool:
        self.checks += 1
        return super().check_loss()


class EveryCheck(CountedChecks):
    """The loss checked at every move of a held price: no safe ranges, as before them."""

    def _set_safe_marks(self, net: float) -> None:
        self.safe_marks.clear()


@pytest.mark.parametrize("max_daily_loss", [5.0, 37.5, 200.0, 1_000.0])
def test_safe_mark_ranges_skip_only_loss_checks_that_could_not_trip(max_daily_loss):
    """Long A, short B, prices random-walking against both: the kill switch trips at the
    very tick, with the very flatten, as when every held-price move is checked."""
    rng = random.Random(19)
    prices = {"A": 100.0, "B": 50.0}
    ticks: list[tuple[int, float, str]] = [(1, 100.0, "A"), (2, 50.0, "B")]
    for ts in range(3, 4_000):
        symbol = rng.choice("AB")
        step = rng.choice((-0.25, -0.25, 0.25)) * (1 if symbol == "A" else -1)
        prices[symbol] += step
        ticks.append((ts, prices[symbol], symbol))
    results = []
    for gate_class in (EveryCheck, CountedChecks):
        book = Book(1e9)
        gate = gate_class(RiskLimits(**{**LOOSE, "max_daily_loss": max_daily_loss}), book)
        script = {1: [buy("A", 10), sell("B", 20)], 40: [buy("A", 5)]}
        eng = Engine(
            "r1", Scripted(script), SimulatedBroker(1e9), gate, book, model_name="scripted"
        )
        play(eng, ticks)
        assert eng.stop_requested.is_set()  # tripped, somewhere in the walk
        sent, refused = outcome(eng)
        results.append((sent, refused, eng.model.asked, eng.book.realized, gate.checks))
    (sent, refused, asked, realized, every), (*with_ranges, ranged) = results
    assert with_ranges == [sent, refused, asked, realized]
    trip = refused[-1][0]
    assert refused[-1][4].startswith("kill switch: max_daily_loss")
    assert [s[0] for s in sent[-2:]] == [trip, trip]  # both legs flattened at the trip
    assert ranged < every  # the ranges did skip checks
    if trip > 200:
        assert ranged * 4 < every


def test_every_refusal_reaches_the_ledger_with_its_reason(tmp_path):
    eng = make(
        {1: [buy("A", 11)], 2: [buy("A", 5), buy("A", 5), buy("A", 5)]},
        max_order_qty=10,
        max_position=10,
    )
    play(eng, [(1, 100.0), (2, 100.0), (3, 100.0)])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.start_run(
        run_id="r1",
        session_date="2024-01-02",
        model="scripted",
        params={},
        symbols=["A"],
        feed="replay",
        broker="simulated",
        started_ns=0,
    )
    ledger.write(eng.take_batch(), "r1")
    assert [(e.ts, e.model, e.qty, e.reason) for e in ledger.risk_events("r1")] == [
        (1, "scripted", 11, "max_order_qty: quantity 11 > 10"),
        (2, "scripted", 5, "max_position: position 15 would exceed 10"),
    ]
    assert [(o.qty, o.status) for o in ledger.orders("r1")] == [(5, "filled"), (5, "filled")]
    ledger.close()


# -- the kill switch through a real session ------------------------------------------------


def test_kill_switch_in_a_session_flattens_stops_and_is_recorded(
    prefect_harness, open_fixture, session_paths
):
    raw = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture)},
        "broker": {"commission_per_share": 2.0},
        "risk": {"max_daily_loss": 150.0},
    }
    result = trading_session(
        config=parse_session_config({**raw, **session_paths}), session_date=date(2013, 9, 3)
    )
    expected = backtest.run(
        raw["model"],
        date(2013, 9, 3),
        ["ES"],
        recording=open_fixture,
        broker=raw["broker"],
        risk=raw["risk"],
    )
    trip = expected.risk_events[-1]
    assert trip.reason == "kill switch: max_daily_loss: net -153.75 is below -150.00"
    assert expected.stop_reason == trip.reason

    assert result["status"] == "completed"
    assert result["message"] == f"ended at {trip.reason}"
    assert result["final_positions"] == {}
    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(result["run_id"])
    events = ledger.risk_events(result["run_id"])
    fills = ledger.fills(result["run_id"])
    ledger.close()
    # exactly the backtest's orders: the model's until the trip, then the one flatten
    assert [(o.symbol, o.side, o.qty, o.ts, o.purpose, o.tag) for o in orders] == [
        (o.symbol, o.side, o.qty, o.ts, o.purpose, o.tag) for o in expected.orders
    ]
    assert orders[-1].tag == "kill switch" and orders[-1].ts == trip.ts
    assert all(o.ts <= trip.ts for o in orders)
    assert [(e.ts, e.reason) for e in events] == [(trip.ts, trip.reason)]
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0


def test_an_unknown_time_in_force_or_a_bad_limit_is_refused_by_name():
    eng = make(
        {
            1: [Order("A", Side.BUY, 1, tif="gtc")],  # type: ignore[arg-type]
            2: [buy("A", 1, limit_price=0.0)],
            3: [Order("A", Side.BUY, 2, tif="cls")],  # type: ignore[arg-type]  # a plain string is fine
        }
    )
    play(eng, [(1, 100.0), (2, 100.0), (3, 100.0)])
    sent, refused = outcome(eng)
    assert sent == [(3, "A", "buy", 2)]
    assert refused == [
        (
            1,
            "A",
            "buy",
            1,
            "invalid_tif: time in force 'gtc' is not one of day, ioc, opg, cls (tradeday.events.TimeInForce)",
        ),
        (2, "A", "buy", 1, "invalid_limit_price: limit_price 0.0 is not positive"),
    ]
    assert eng.risk.counts == {"invalid_tif": 1, "invalid_limit_price": 1}
