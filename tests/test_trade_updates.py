"""Alpaca's ``trade_updates`` stream: the local test server, the broker, and the hub.

The test server's stream is checked with alpaca-py's own ``TradingStream``; the broker and
the hub with real websockets and real HTTP against that server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import TradeEvent
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from websockets.sync.client import connect

from tests.alpaca_server import AlpacaTestServer
from tests.conftest import wait_until

KEY = "fake-key-tradeupdates-3k9"
SECRET = "fake-secret-tradeupdates-8m1"

pytestmark = pytest.mark.slow  # real servers and sockets


@pytest.fixture
def server() -> Iterator[AlpacaTestServer]:
    with AlpacaTestServer(key_id=KEY, secret_key=SECRET, fill_mode="manual") as srv:
        yield srv


def test_alpaca_py_trading_stream_receives_every_event_kind(server: AlpacaTestServer) -> None:
    """alpaca-py's TradingStream authenticates, listens and parses each event as a
    TradeUpdate: new, partial_fill, fill (price, qty, position_qty, execution_id),
    canceled, expired and rejected, in the order they happened."""
    got: list[TradeUpdate] = []
    stream = TradingStream(KEY, SECRET, url_override=server.stream_url)

    async def on_update(update: TradeUpdate) -> None:
        got.append(update)

    stream.subscribe_trade_updates(on_update)
    runner = threading.Thread(target=stream.run, name="trading-stream", daemon=True)
    runner.start()
    try:
        wait_until(lambda: server.trade_update_listeners == 1, 30, "TradingStream listening", 0.05)
        client = TradingClient(KEY, SECRET, url_override=server.url)

        def market(cid: str, qty: int, side: str = "buy") -> None:
            client.submit_order(
                MarketOrderRequest(
                    symbol="SPY", qty=qty, side=side, time_in_force="day", client_order_id=cid
                )
            )

        market("r1-1", 10)
        server.fill("r1-1", qty=4, price=101.5)
        server.fill("r1-1", price=102.0)
        market("r1-2", 3)
        server.cancel("r1-2")
        client.submit_order(
            LimitOrderRequest(
                symbol="SPY",
                qty=2,
                side="sell",
                time_in_force="day",
                limit_price=150,
                client_order_id="r1-3",
            )
        )
        server.cancel("r1-3", status="expired")
        market("r1-4", 1)
        server.reject("r1-4")
        wait_until(lambda: len(got) == 9, 30, "nine trade updates", 0.05)
    finally:
        stream.stop()
        runner.join(10)
    assert [(u.order.client_order_id, TradeEvent(u.event).value) for u in got] == [
        ("r1-1", "new"),
        ("r1-1", "partial_fill"),
        ("r1-1", "fill"),
        ("r1-2", "new"),
        ("r1-2", "canceled"),
        ("r1-3", "new"),
        ("r1-3", "expired"),
        ("r1-4", "new"),
        ("r1-4", "rejected"),
    ]
    partial, fill = got[1], got[2]
    assert (partial.qty, partial.price, partial.position_qty) == (4, 101.5, 4)
    assert (fill.qty, fill.price, fill.position_qty) == (6, 102.0, 10)
    assert partial.order.filled_qty == "4" and fill.order.filled_qty == "10"
    assert fill.order.filled_avg_price == "101.8"  # (4*101.5 + 6*102) / 10
    assert partial.execution_id and fill.execution_id and partial.execution_id != fill.execution_id
    assert all(
        u.execution_id is None and u.qty is None
        for u in got
        if "fill" not in TradeEvent(u.event).value
    )
    assert [u.order.status.value for u in got[4::2][:3]] == ["canceled", "expired", "rejected"]
    assert server.trade_updates[2]["execution_id"] == str(fill.execution_id)


def test_stream_speaks_binary_json_and_refuses_wrong_keys(server: AlpacaTestServer) -> None:
    """Frames are binary holding JSON, as Alpaca's; wrong keys get ``unauthorized`` and no
    events; a listen for other streams listens to none of them."""
    with connect(server.stream_url, open_timeout=10) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "x"}}))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, bytes)
        assert json.loads(reply) == {
            "stream": "authorization",
            "data": {"status": "unauthorized", "action": "authenticate"},
        }
    with connect(server.stream_url, open_timeout=10) as ws:
        ws.send(
            json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}})
        )
        assert json.loads(ws.recv(timeout=10))["data"]["status"] == "authorized"
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["account_updates"]}}))
        assert json.loads(ws.recv(timeout=10)) == {"stream": "listening", "data": {"streams": []}}
    assert server.trade_update_listeners == 0
