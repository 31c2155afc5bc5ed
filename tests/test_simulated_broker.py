"""The simulated broker: latency, quotes, next-trade and next-bar fills, slippage, commission,
buying power, all on tick time; and two replays of the same day fill identically."""

from __future__ import annotations

from datetime import date

import pytest

from flows.session import trading_session
from tradeday import backtest
from tradeday.brokers.base import BrokerOrder, ExecType
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import parse_session_config
from tradeday.events import Bar, Quote, Side, Trade
from tradeday.ledger import Ledger

MS = 1_000_000
BUY, SELL = Side.BUY, Side.SELL


def order(cid: str, side: Side, qty: int, ts: int, symbol: str = "A", limit: float | None = None):
    return BrokerOrder(cid, symbol, side, qty, ts, limit)


def drain(broker: SimulatedBroker) -> list[tuple]:
    out = []
    while broker.executions:
        e = broker.executions.popleft()
        out.append((e.client_order_id, e.kind.value, e.ts, e.qty, e.price, e.fee, e.reason))
    return out


def test_market_order_fills_at_the_next_trade_not_the_one_that_triggered_it():
    b = SimulatedBroker()
    b.on_trade(Trade("A", 100, 10.0, 1))
    b.submit(order("o1", BUY, 3, 100))
    b.on_trade(Trade("B", 101, 99.0, 1))  # another symbol's print does not fill it
    b.on_trade(Trade("A", 101, 10.5, 1))
    assert drain(b) == [
        ("o1", "accepted", 100, 0, 0.0, 0.0, ""),
        ("o1", "fill", 101, 3, 10.5, 0.0, ""),
    ]
    assert b.positions() == {"A": 3} and b.cash == 1_000_000 - 31.5


def test_latency_is_tick_time():
    b = SimulatedBroker(latency_ms=50)
    b.on_trade(Trade("A", 0, 10.0, 1))
    b.submit(order("o1", SELL, 2, 0))
    b.on_trade(Trade("A", 50 * MS - 1, 11.0, 1))  # not yet
    b.on_trade(Trade("A", 50 * MS, 12.0, 1))  # due: fills here
    b.on_trade(Trade("A", 51 * MS, 13.0, 1))
    assert [e[1:5] for e in drain(b)] == [("accepted", 0, 0, 0.0), ("fill", 50 * MS, 2, 12.0)]


def test_quotes_win_over_trades_buy_at_ask_sell_at_bid():
    b = SimulatedBroker()
    b.on_quote(Quote("A", 1, 9.9, 100, 10.1, 100))
    b.submit(order("buy", BUY, 1, 1))  # a standing quote fills at once, at the ask
    b.submit(order("sell", SELL, 1, 1))  # and at the bid
    assert [(e[0], e[1], e[4]) for e in drain(b) if e[1] == "fill"] == [
        ("buy", "fill", 10.1),
        ("sell", "fill", 9.9),
    ]
    slow = SimulatedBroker(latency_ms=1)
    slow.on_quote(Quote("A", 1, 9.9, 100, 10.1, 100))
    slow.submit(order("buy", BUY, 1, 1))
    slow.on_quote(Quote("A", 2, 10.0, 100, 10.2, 100))  # before due: quote moves, no fill
    slow.on_trade(Trade("A", 1 + MS, 50.0, 1))  # due at a trade: still fills at the ask
    assert [e[1:5] for e in drain(slow)][-1] == ("fill", 1 + MS, 1, 10.2)


def test_bars_fill_at_the_next_bars_open():
    b = SimulatedBroker()
    b.on_bar(Bar("A", 0, 10.0, 11.0, 9.0, 10.5, 100))
    b.submit(order("o1", BUY, 1, 0))
    b.on_bar(Bar("A", 60 * 10**9, 10.7, 11.0, 10.0, 10.2, 100))
    assert [e[1:5] for e in drain(b)] == [("accepted", 0, 0, 0.0), ("fill", 60 * 10**9, 1, 10.7)]


def test_slippage_and_commission_are_against_the_order():
    b = SimulatedBroker(slippage_bps=10, commission_per_share=0.005)
    b.submit(order("buy", BUY, 100, 0))
    b.submit(order("sell", SELL, 100, 0))
    b.on_trade(Trade("A", 1, 50.0, 1))
    fills = [e for e in drain(b) if e[1] == "fill"]
    assert [(e[0], e[4], e[5]) for e in fills] == [
        ("buy", pytest.approx(50.05), pytest.approx(0.5)),
        ("sell", pytest.approx(49.95), pytest.approx(0.5)),
    ]
    assert b.cash == pytest.approx(1_000_000 - 100 * 0.1 - 1.0)


def test_orders_beyond_buying_power_are_rejected_with_the_amounts():
    b = SimulatedBroker(starting_cash=1_000)
    b.on_trade(Trade("A", 0, 10.0, 1))
    b.submit(order("o1", BUY, 60, 0))  # 600 of 1,000
    b.submit(order("o2", BUY, 50, 0))  # 500 more while o1 is in flight: refused
    b.submit(order("o3", BUY, 40, 0))  # exactly the 400 left
    b.on_trade(Trade("A", 1, 10.0, 1))
    assert [(e[0], e[1], e[6]) for e in drain(b)] == [
        ("o1", "accepted", ""),
        ("o2", "rejected", "insufficient buying power: buy 50 A needs 500.00, buying power 400.00"),
        ("o3", "accepted", ""),
        ("o1", "fill", ""),
        ("o3", "fill", ""),
    ]
    assert b.buying_power() == 0.0


def test_shorts_take_twice_their_value_and_getting_out_is_always_allowed():
    b = SimulatedBroker(starting_cash=1_000)
    b.on_trade(Trade("A", 0, 10.0, 1))
    b.submit(order("short", SELL, 100, 0))  # proceeds 1,000 held, plus 1,000 collateral
    b.on_trade(Trade("A", 1, 10.0, 1))
    assert b.buying_power() == 0.0
    b.submit(order("more", SELL, 1, 1))
    b.on_trade(Trade("A", 2, 12.0, 1))  # the short loses: buying power goes negative
    assert b.buying_power() == pytest.approx(2_000 - 2 * 1_200)
    b.submit(order("cover", BUY, 50, 2))  # reduces exposure: accepted though negative
    b.on_trade(Trade("A", 3, 12.0, 1))
    assert [(e[0], e[1], e[4], e[6]) for e in drain(b)] == [
        ("short", "accepted", 0.0, ""),
        ("short", "fill", 10.0, ""),
        (
            "more",
            "rejected",
            0.0,
            "insufficient buying power: sell 1 A needs 10.00, buying power 0.00",
        ),
        ("cover", "accepted", 0.0, ""),
        ("cover", "fill", 12.0, ""),
    ]
    assert b.positions() == {"A": -50}
    assert b.buying_power() == pytest.approx(200.0)  # cash 1,400 less twice the 600 short


def test_limits_fill_only_when_marketable_and_flush_cancels_the_rest():
    b = SimulatedBroker()
    b.submit(order("lim", BUY, 1, 0, limit=9.5))
    b.submit(order("mkt", SELL, 1, 0, symbol="Z"))  # no price for Z, ever
    b.on_trade(Trade("A", 1, 10.0, 1))  # above the limit
    b.on_trade(Trade("A", 2, 9.5, 1))  # at the limit: fills
    b.submit(order("lim2", BUY, 1, 2, limit=9.0))
    b.flush(3)
    assert [(e[0], e[1], e[4], e[6]) for e in drain(b)] == [
        ("lim", "accepted", 0.0, ""),
        ("mkt", "accepted", 0.0, ""),
        ("lim", "fill", 9.5, ""),
        ("lim2", "accepted", 0.0, ""),
        ("mkt", "canceled", 0.0, "no price to fill at"),
        ("lim2", "canceled", 0.0, "limit not reached"),
    ]


def test_a_resubmit_is_ignored_and_find_order_knows_the_fate():
    b = SimulatedBroker()
    b.submit(order("o1", BUY, 1, 0))
    b.on_trade(Trade("A", 1, 10.0, 1))
    b.submit(order("o1", BUY, 1, 1))
    b.on_trade(Trade("A", 2, 10.0, 1))
    assert [e[1] for e in drain(b)] == ["accepted", "fill"]
    found = b.find_order("o1")
    assert found is not None and (found.kind, found.price) == (ExecType.FILL, 10.0)
    assert b.find_order("nope") is None


# -- determinism over real replays ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_two_replays_of_the_same_day_fill_identically(tmp_path, open_fixture):
    raw = {
        "model": {"name": "volume_modulo", "quantity": 3},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture)},
        "broker": {"latency_ms": 75, "slippage_bps": 1.5, "commission_per_share": 0.25},
    }
    runs = []
    for n in (1, 2):
        paths = {
            "ledger_url": f"sqlite:///{tmp_path / f'ledger{n}.sqlite'}",
            "report_path": str(tmp_path / f"report{n}.duckdb"),
        }
        result = trading_session(
            config=parse_session_config({**raw, **paths}), session_date=date(2013, 9, 3)
        )
        ledger = Ledger(paths["ledger_url"])
        fills = [
            (f.client_order_id.rsplit("-", 1)[1], f.symbol, f.side, f.qty, f.price, f.fee, f.ts)
            for f in ledger.fills(result["run_id"])
        ]
        ledger.close()
        runs.append((fills, result["net"]))
    (first, net1), (second, net2) = runs
    assert len(first) > 20
    assert first == second
    assert net1 == net2
    expected = backtest.run(
        raw["model"], date(2013, 9, 3), ["ES"], recording=open_fixture, broker=raw["broker"]
    )
    assert first == [
        (
            f.client_order_id.rsplit("-", 1)[1],
            f.symbol,
            f.side,
            f.qty,
            f.price,
            f.fee,
            f.ts,
        )
        for f in expected.fills
    ]
