"""Several models on one Alpaca account: orders net at Alpaca, each model's position stays its own.

Against the local Alpaca test server (tests/alpaca_server.py), which mimics Alpaca's rules
for the one position per symbol per account, over real HTTP with alpaca-py.
"""

from __future__ import annotations

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

from tests import test_alpaca_broker
from tests.test_alpaca_broker import KEY, SECRET, brief, collect, order
from tradeday.brokers.base import ExecType, Execution
from tradeday.events import Side

pytestmark = pytest.mark.slow  # real servers and sockets, though the module takes seconds

ACCEPTED, FILL, PARTIAL, CANCELED = (
    ExecType.ACCEPTED,
    ExecType.FILL,
    ExecType.PARTIAL_FILL,
    ExecType.CANCELED,
)
BUY, SELL = Side.BUY, Side.SELL
servers, brokers = test_alpaca_broker.servers, test_alpaca_broker.brokers  # the same fixtures


def position(executions: list[Execution]) -> int:
    """A model's own position, from its own fills (what its ledger books)."""
    return sum(e.qty if e.side is BUY else -e.qty for e in executions if e.kind in (FILL, PARTIAL))


def at_server(server, prefix: str) -> list[tuple[str, str, str, str, str]]:
    return [
        (o["client_order_id"], o["side"], o["qty"], o["position_intent"], o["status"])
        for o in server.orders
        if o["client_order_id"].startswith(prefix)
    ]


def refusal(client: TradingClient, side: OrderSide, qty: int, **limit: float) -> str:
    fields = {"symbol": "SPY", "qty": qty, "side": side, "time_in_force": TimeInForce.DAY}
    request = LimitOrderRequest(**fields, **limit) if limit else MarketOrderRequest(**fields)
    with pytest.raises(APIError) as refused:
        client.submit_order(request)
    assert refused.value.status_code == 403
    return str(refused.value.message)


def test_test_server_refuses_what_alpaca_refuses_on_one_position(servers) -> None:
    server = servers(fill_price={"SPY": 100.0}, allow_short=True, fill_mode="manual")
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.url)
    buy = MarketOrderRequest(symbol="SPY", qty=10, side=OrderSide.BUY, time_in_force="day")
    server.fill(str(client.submit_order(buy).client_order_id))
    assert refusal(client, OrderSide.SELL, 15) == (
        "insufficient qty available for order (requested: 15, available: 10)"
    )
    held = MarketOrderRequest(symbol="SPY", qty=4, side=OrderSide.SELL, time_in_force="day")
    closing = client.submit_order(held)
    assert closing.position_intent == "sell_to_close"
    assert client.get_open_position("SPY").qty_available == "6"
    assert refusal(client, OrderSide.SELL, 7) == (
        "insufficient qty available for order (requested: 7, available: 6)"
    )
    server.fill(str(closing.client_order_id))
    sell = MarketOrderRequest(symbol="SPY", qty=6, side=OrderSide.SELL, time_in_force="day")
    server.fill(str(client.submit_order(sell).client_order_id))
    assert server.positions == {}
    client.submit_order(
        LimitOrderRequest(
            symbol="SPY", qty=3, side=OrderSide.BUY, time_in_force="day", limit_price=99.0
        )
    )
    assert refusal(client, OrderSide.SELL, 1) == (
        "cannot open a short sell while a long buy order is open"
    )
    client.cancel_orders()
    short = MarketOrderRequest(symbol="SPY", qty=5, side=OrderSide.SELL, time_in_force="day")
    server.fill(str(client.submit_order(short).client_order_id))
    assert server.positions == {"SPY": -5}
    assert refusal(client, OrderSide.BUY, 6) == (
        "insufficient qty available for order (requested: 6, available: 5)"
    )


@pytest.mark.parametrize("first", ["long model", "short model"])
def test_two_models_net_on_one_account_and_each_flattens_its_own(
    servers, brokers, first: str
) -> None:
    server = servers(fill_price={"SPY": 100.0}, allow_short=True)
    long_model, short_model = brokers(server), brokers(server)  # one account: the same keys

    long_model.submit(order("a-1", BUY, 10))
    got_a = collect(long_model, 2)
    assert server.positions == {"SPY": 10}
    short_model.submit(order("b-1", SELL, 15))  # long 10 at Alpaca: 10 to close, then 5 to open
    got_b = collect(short_model, 3)
    assert [brief(e) for e in got_b] == [
        ("b-1", ACCEPTED, SELL, 0, 0.0, ""),
        ("b-1", PARTIAL, SELL, 10, 100.0, ""),
        ("b-1", FILL, SELL, 5, 100.0, ""),
    ]
    assert at_server(server, "b-") == [
        ("b-1", "sell", "10", "sell_to_close", "filled"),
        ("b-1-leg2", "sell", "5", "sell_to_open", "filled"),
    ]
    assert server.positions == {"SPY": -5}
    assert (position(got_a), position(got_b)) == (10, -15)

    # each flattens its own position, computed from its own fills
    if first == "long model":
        long_model.submit(order("a-2", SELL, 10))
        got_a += collect(long_model, 2)
        short_model.submit(order("b-2", BUY, 15))
        got_b += collect(short_model, 2)
    else:
        short_model.submit(order("b-2", BUY, 15))
        got_b += collect(short_model, 3)
        long_model.submit(order("a-2", SELL, 10))
        got_a += collect(long_model, 2)

    assert (position(got_a), position(got_b)) == (0, 0)
    assert server.positions == {}
    if first == "short model":  # short 5 at Alpaca: its buy of 15 closes 5, then opens 10
        assert at_server(server, "b-2") == [
            ("b-2", "buy", "5", "buy_to_close", "filled"),
            ("b-2-leg2", "buy", "10", "buy_to_open", "filled"),
        ]
        assert at_server(server, "a-2") == [("a-2", "sell", "10", "sell_to_close", "filled")]
    else:  # short 5 at Alpaca: the long model's sell of 10 takes it to 15, the buy closes it
        assert at_server(server, "a-2") == [("a-2", "sell", "10", "sell_to_open", "filled")]
        assert at_server(server, "b-2") == [("b-2", "buy", "15", "buy_to_close", "filled")]
    folded = [
        (o.client_order_id, o.qty, o.filled_qty, o.status) for o in short_model.orders_of("b-", 0)
    ]
    assert folded == [("b-1", 15, 15, "filled"), ("b-2", 15, 15, "filled")]
    assert server.cash == 100_000.0


def test_the_rest_refused_ends_the_order_canceled_with_alpacas_reason(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, allow_short=False)
    long_model, other = brokers(server), brokers(server)
    long_model.submit(order("a-1", BUY, 10))
    collect(long_model, 2)
    other.submit(order("b-1", SELL, 15))
    assert [brief(e) for e in collect(other, 3)] == [
        ("b-1", ACCEPTED, SELL, 0, 0.0, ""),
        ("b-1", PARTIAL, SELL, 10, 100.0, ""),
        (
            "b-1",
            CANCELED,
            SELL,
            0,
            0.0,
            "rest of the order (5) refused: "
            "insufficient qty available for order (requested: 5, available: 0)",
        ),
    ]
    assert server.positions == {}


def test_canceling_a_split_order_cancels_its_rest(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, allow_short=True, fill_mode="manual")
    long_model, short_model = brokers(server), brokers(server)
    long_model.submit(order("a-1", BUY, 10))
    collect(long_model, 1)
    server.fill("a-1")
    collect(long_model, 1)
    short_model.submit(order("b-1", SELL, 15, limit_price=101.0))
    collect(short_model, 1)
    assert at_server(server, "b-") == [("b-1", "sell", "10", "sell_to_close", "new")]
    server.fill("b-1", 4)
    assert [brief(e) for e in collect(short_model, 1)] == [("b-1", PARTIAL, SELL, 4, 100.0, "")]
    short_model.cancel_order("b-1", 0)
    assert [brief(e) for e in collect(short_model, 1)] == [
        ("b-1", CANCELED, SELL, 0, 0.0, "canceled")
    ]
    assert at_server(server, "b-") == [("b-1", "sell", "10", "sell_to_close", "canceled")]
    assert server.positions == {"SPY": 6}
