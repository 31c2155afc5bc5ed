"""The Alpaca paper broker against the local Alpaca test server, over real HTTP."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from tests.alpaca_server import AlpacaTestServer
from tradeday.brokers.alpaca import (
    AlpacaAuthError,
    AlpacaPaperBroker,
    AlpacaUnavailable,
)
from tradeday.brokers.base import BrokerOrder, ExecType, Execution
from tradeday.events import Side
from tradeday.events import TimeInForce as Tif

# Distinctive so that a leak anywhere in logs, reprs or errors is found by substring.
KEY = "fake-key-leakcheck-7q2zz"
SECRET = "sEcReT-must-never-appear-91x"
POLL = 0.02

pytestmark = pytest.mark.slow  # real servers and sockets, though the module takes seconds

ACCEPTED, FILL, PARTIAL = ExecType.ACCEPTED, ExecType.FILL, ExecType.PARTIAL_FILL
BUY, SELL = Side.BUY, Side.SELL


@pytest.fixture
def servers() -> Iterator[Callable[..., AlpacaTestServer]]:
    started: list[AlpacaTestServer] = []

    def start(**kwargs: Any) -> AlpacaTestServer:
        server = AlpacaTestServer(key_id=KEY, secret_key=SECRET, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "alpaca-testserver"]


@pytest.fixture
def brokers(
    servers: Callable[..., AlpacaTestServer],
) -> Iterator[Callable[..., AlpacaPaperBroker]]:
    made: list[AlpacaPaperBroker] = []

    def make(server: AlpacaTestServer, **kwargs: Any) -> AlpacaPaperBroker:
        options: dict[str, Any] = {"poll_interval": POLL, "backoff": 0.01, "max_backoff": 0.1}
        broker = AlpacaPaperBroker(KEY, SECRET, base_url=server.url, **(options | kwargs))
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.close()
    assert not [t for t in threading.enumerate() if t.name == "alpaca-broker"]


def order(cid: str, side: Side, qty: int, symbol: str = "SPY", **kw: Any) -> BrokerOrder:
    return BrokerOrder(client_order_id=cid, symbol=symbol, side=side, qty=qty, ts=0, **kw)


def collect(broker: AlpacaPaperBroker, count: int, timeout: float = 5.0) -> list[Execution]:
    """Exactly ``count`` executions: waits for them, then a few polls to be sure of no more."""
    got: list[Execution] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"timed out with {got}"
        while broker.executions:
            got.append(broker.executions.popleft())
        time.sleep(0.002)
    time.sleep(5 * POLL)
    got.extend(broker.executions)
    broker.executions.clear()
    assert len(got) == count, got
    return got


def brief(e: Execution) -> tuple[str, ExecType, Side, int, float, str]:
    return (e.client_order_id, e.kind, e.side, e.qty, e.price, e.reason)


def test_buy_then_sell_give_exact_fills(servers, brokers) -> None:
    prices = {"SPY": 100.25}
    server = servers(fill_price=prices)
    broker = brokers(server)

    broker.submit(order("r1-m-1", BUY, 10))
    bought = collect(broker, 2)
    prices["SPY"] = 101.5
    broker.submit(order("r1-m-2", SELL, 10))
    sold = collect(broker, 2)

    assert [brief(e) for e in bought + sold] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", FILL, BUY, 10, 100.25, ""),
        ("r1-m-2", ACCEPTED, SELL, 0, 0.0, ""),
        ("r1-m-2", FILL, SELL, 10, 101.5, ""),
    ]
    ids = {o["client_order_id"]: o["id"] for o in server.orders}
    assert all(e.broker_order_id == ids[e.client_order_id] for e in bought + sold)
    assert all(e.symbol == "SPY" and e.ts > 0 for e in bought + sold)
    assert bought[1].ts >= bought[0].ts
    assert broker.positions() == {} == server.positions
    assert server.cash == 100_000 - 10 * 100.25 + 10 * 101.5


def test_partial_mode_reports_each_part(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 99.5}, fill_mode="partial")
    broker = brokers(server)

    broker.submit(order("r1-m-1", BUY, 101))

    assert [brief(e) for e in collect(broker, 3)] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", PARTIAL, BUY, 50, 99.5, ""),
        ("r1-m-1", FILL, BUY, 51, 99.5, ""),
    ]
    assert broker.positions() == {"SPY": 101}


def test_partial_fill_prices_come_from_the_running_average(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 100))
    broker.submit(order("r1-m-2", BUY, 3))
    collect(broker, 2)

    steps = [("r1-m-1", 30, 100.0), ("r1-m-1", 45, 101.5), ("r1-m-1", 25, 99.99)]
    # 1 @ 100 then 2 @ 101: the average 100.666... is not a finite decimal.
    steps += [("r1-m-2", 1, 100.0), ("r1-m-2", 2, 101.0)]
    seen = []
    for cid, qty, price in steps:
        server.fill(cid, qty, price)
        seen += collect(broker, 1)

    assert [brief(e) for e in seen] == [
        ("r1-m-1", PARTIAL, BUY, 30, 100.0, ""),
        ("r1-m-1", PARTIAL, BUY, 45, 101.5, ""),
        ("r1-m-1", FILL, BUY, 25, 99.99, ""),
        ("r1-m-2", PARTIAL, BUY, 1, 100.0, ""),
        ("r1-m-2", FILL, BUY, 2, 101.0, ""),
    ]
    assert broker.find_order("r1-m-1") == Execution(
        "r1-m-1",
        FILL,
        seen[2].ts,
        "SPY",
        BUY,
        qty=100,
        price=100.6725,
        broker_order_id=seen[2].broker_order_id,
    )


@pytest.mark.parametrize("ending", ["canceled", "expired"])
def test_partly_filled_then_ended(servers, brokers, ending: str) -> None:
    server = servers(fill_mode="manual")
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 100))
    collect(broker, 1)

    server.fill("r1-m-1", 40, 100.0)
    server.cancel("r1-m-1", ending)

    assert [brief(e) for e in collect(broker, 2)] == [
        ("r1-m-1", PARTIAL, BUY, 40, 100.0, ""),
        ("r1-m-1", ExecType.CANCELED, BUY, 0, 0.0, ending),
    ]
    assert broker.find_order("r1-m-1").kind is ExecType.CANCELED


def test_resubmit_after_restart_follows_the_existing_order(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    first = brokers(server)
    first.submit(order("r1-m-1", BUY, 10))
    (accepted,) = collect(first, 1)
    first.close()

    second = brokers(server)  # a restarted session that does not know it sent r1-m-1
    second.submit(order("r1-m-1", BUY, 10))
    (again,) = collect(second, 1)
    server.fill("r1-m-1", 10, 100.5)

    assert [o["client_order_id"] for o in server.orders] == ["r1-m-1"]
    assert server.requests.count(("POST", "/v2/orders")) == 2  # the second one was refused
    assert brief(again) == brief(accepted)
    assert again.broker_order_id == accepted.broker_order_id
    assert [brief(e) for e in collect(second, 1)] == [("r1-m-1", FILL, BUY, 10, 100.5, "")]


def test_resubmit_of_a_filled_order_reports_it_instead_of_buying_twice(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    first = brokers(server)
    first.submit(order("r1-m-1", BUY, 10))
    collect(first, 2)
    first.close()

    second = brokers(server)
    second.submit(order("r1-m-1", BUY, 10))

    assert [brief(e) for e in collect(second, 2)] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", FILL, BUY, 10, 100.0, ""),
    ]
    assert len(server.orders) == 1
    assert server.positions == {"SPY": 10}


def test_find_order_after_restart_then_resubmit_sends_nothing(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    first = brokers(server)
    first.submit(order("r1-m-1", BUY, 10))
    collect(first, 1)
    server.fill("r1-m-1", 4, 100.0)
    collect(first, 1)
    first.close()

    second = brokers(server)
    found = second.find_order("r1-m-1")
    second.submit(order("r1-m-1", BUY, 10))
    server.fill("r1-m-1", 6, 101.0)

    assert found is not None
    assert (found.kind, found.qty, found.price) == (PARTIAL, 4, 100.0)
    assert found.broker_order_id == server.orders[0]["id"]
    assert [brief(e) for e in collect(second, 1)] == [("r1-m-1", FILL, BUY, 6, 101.0, "")]
    assert server.requests.count(("POST", "/v2/orders")) == 1
    assert second.find_order("r1-m-404") is None


def test_lost_answer_is_retried_without_a_second_order(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server)
    server.fail_next(1, status=503, after_processing=True)  # the order lands, the answer is lost

    broker.submit(order("r1-m-1", BUY, 10))

    assert [brief(e) for e in collect(broker, 2)] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", FILL, BUY, 10, 100.0, ""),
    ]
    assert len(server.orders) == 1
    assert server.requests.count(("POST", "/v2/orders")) == 2


def test_transient_errors_are_retried(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server)
    server.fail_next(2, status=429)

    broker.submit(order("r1-m-1", BUY, 10))

    assert [e.kind for e in collect(broker, 2)] == [ACCEPTED, FILL]
    assert server.requests.count(("POST", "/v2/orders")) == 3
    assert len(server.orders) == 1


def test_unconfirmed_order_is_rejected_then_found_by_polling(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server, max_retries=0)
    server.fail_next(1, status=503, after_processing=True)

    broker.submit(order("r1-m-1", BUY, 10))
    got = collect(broker, 3)

    assert got[0].kind is ExecType.REJECTED
    assert got[0].reason.startswith("not confirmed: POST order r1-m-1: HTTP 503")
    assert [brief(e) for e in got[1:]] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", FILL, BUY, 10, 100.0, ""),
    ]


def test_refusals_become_rejected_executions(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, buying_power=1_000.0)
    broker = brokers(server)

    broker.submit(order("r1-m-1", BUY, 11))
    broker.submit(order("r1-m-2", SELL, 5))
    broker.submit(order("r1-m-3", BUY, 0))
    broker.submit(order("r1-m-4", BUY, 1, symbol="NOPE"))
    broker.submit(order("r1-m-5", BUY, 1, limit_price=-1.0))
    broker.submit(order("r1-m-6", BUY, 10))

    assert [brief(e) for e in collect(broker, 7)] == [
        ("r1-m-1", ExecType.REJECTED, BUY, 0, 0.0, "insufficient buying power"),
        (
            "r1-m-2",
            ExecType.REJECTED,
            SELL,
            0,
            0.0,
            "insufficient qty available for order (requested: 5, available: 0)",
        ),
        ("r1-m-3", ExecType.REJECTED, BUY, 0, 0.0, "qty must be > 0"),
        ("r1-m-4", ExecType.REJECTED, BUY, 0, 0.0, "asset 'NOPE' not found"),
        ("r1-m-5", ExecType.REJECTED, BUY, 0, 0.0, "limit_price must be > 0"),
        ("r1-m-6", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-6", FILL, BUY, 10, 100.0, ""),
    ]
    assert [o["client_order_id"] for o in server.orders] == ["r1-m-6"]


def test_close_all_positions_leaves_the_account_flat(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0, "QQQ": 50.0, "IWM": 200.0}, allow_short=True)
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 10))
    broker.submit(order("r1-m-2", SELL, 5, symbol="QQQ"))
    broker.submit(order("r1-m-3", BUY, 1, symbol="IWM", limit_price=1.0))  # rests
    collect(broker, 5)
    assert broker.positions() == {"SPY": 10, "QQQ": -5}

    assert broker.close_all_positions() == {"QQQ": 200, "SPY": 200}
    left = broker.wait_until_flat(timeout=5.0)

    assert left.flat, left
    assert broker.positions() == {} == server.positions
    assert all(o["status"] in ("filled", "canceled") for o in server.orders)
    got = collect(broker, 5)
    assert ("r1-m-3", ExecType.CANCELED, BUY, 0, 0.0, "canceled") in [brief(e) for e in got]
    closing = sorted((e.symbol, e.kind, e.side, e.qty, e.price) for e in got if e.symbol != "IWM")
    assert closing == [
        ("QQQ", ACCEPTED, BUY, 0, 0.0),
        ("QQQ", FILL, BUY, 5, 50.0),
        ("SPY", ACCEPTED, SELL, 0, 0.0),
        ("SPY", FILL, SELL, 10, 100.0),
    ]
    assert server.cash == 100_000.0


def test_wait_until_flat_reports_what_is_left(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0, "QQQ": 50.0}, fill_mode="manual")
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 10))
    collect(broker, 1)
    server.fill("r1-m-1", 10)
    broker.submit(order("r1-m-2", BUY, 1, symbol="QQQ"))
    collect(broker, 2)

    left = broker.wait_until_flat(["SPY", "QQQ"], timeout=0.05)

    assert not left.flat
    assert left.positions == {"SPY": 10}
    assert left.open_orders == ("r1-m-2",)
    assert broker.wait_until_flat(["IWM"], timeout=0.05).flat


def test_bad_keys_fail_at_start(servers) -> None:
    server = servers()
    with pytest.raises(
        AlpacaAuthError, match=r"refused the keys \(401: request is not authorized\)"
    ):
        AlpacaPaperBroker(KEY, "wrong-secret", base_url=server.url).start()
    with pytest.raises(AlpacaAuthError, match="both required"):
        AlpacaPaperBroker(KEY, "", base_url=server.url)


def test_unreachable_api_gives_up_after_bounded_backoff() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(AlpacaUnavailable, match=r"gave up after 3 attempts"):
        AlpacaPaperBroker(KEY, SECRET, base_url=url, max_retries=2, backoff=0.01).start()
    assert time.monotonic() - started < 2.0


def test_keys_never_appear_in_logs_reprs_or_errors(servers, brokers, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server)
    server.fail_next(1, status=503)
    broker.submit(order("r1-m-1", BUY, 10))
    broker.submit(order("r1-m-2", SELL, 50))  # 10 closes the long, the rest is refused
    collect(broker, 5)
    broker.close_all_positions()
    broker.wait_until_flat()
    with pytest.raises(AlpacaAuthError) as refused:
        AlpacaPaperBroker(KEY, SECRET + "x", base_url=server.url).start()

    texts = [caplog.text, repr(broker), str(broker), repr(server), str(refused.value)]
    assert "retry 1/4" in caplog.text and "refused" in caplog.text  # the scenario did log
    assert "/v2/orders" in caplog.text  # and urllib3 logged at DEBUG
    for text in texts:
        assert KEY not in text and SECRET not in text
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_submit_does_not_wait_for_http(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server)
    server.latency = 0.2

    started = time.perf_counter()
    broker.submit(order("r1-m-1", BUY, 10))
    elapsed = time.perf_counter() - started

    assert elapsed < 0.01
    assert [e.kind for e in collect(broker, 2)] == [ACCEPTED, FILL]


def test_no_requests_while_nothing_is_working(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 10))
    collect(broker, 2)

    before = len(server.requests)
    time.sleep(10 * POLL)

    assert len(server.requests) == before


def test_closed_broker_rejects_new_orders(servers, brokers) -> None:
    broker = brokers(servers())
    broker.close()
    broker.close()

    broker.submit(order("r1-m-1", BUY, 1))

    assert [brief(e) for e in broker.executions] == [
        ("r1-m-1", ExecType.REJECTED, BUY, 0, 0.0, "broker is closed")
    ]


def test_clock_is_utc(servers, brokers) -> None:
    server = servers(is_open=False)
    clock = brokers(server).clock()

    assert not clock.is_open
    assert clock.timestamp.utcoffset().total_seconds() == 0
    assert clock.timestamp < clock.next_open < clock.next_close


def test_server_speaks_what_alpaca_py_parses(servers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.url)
    buy = {"symbol": "SPY", "side": OrderSide.BUY, "time_in_force": TimeInForce.DAY}

    placed = client.submit_order(MarketOrderRequest(qty=10, client_order_id="x-1", **buy))
    assert client.get_order_by_id(placed.id).client_order_id == "x-1"
    assert [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))] == [
        placed.id
    ]
    assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED)) == []
    server.fill("x-1", 10)
    assert client.get_open_position("SPY").qty == "10"
    closing = client.close_position("SPY")
    assert (closing.side.value, closing.qty) == ("sell", "10")
    client.submit_order(LimitOrderRequest(qty=1, limit_price=99, client_order_id="x-2", **buy))
    cancels = client.cancel_orders()  # the closing order (manual mode: unfilled) and x-2
    assert len(cancels) == 2 and {c.status for c in cancels} == {200}
    with pytest.raises(APIError) as missing:
        client.get_open_position("QQQ")
    assert (missing.value.status_code, missing.value.message) == (404, "position does not exist")
    bare = requests.get(f"{server.url}/v2/account", timeout=5)
    assert (bare.status_code, bare.json()["code"]) == (401, 40110000)
    assert client.get_account().cash == "99000"


def test_many_working_orders_are_polled_by_pages_not_one_by_one(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 1.0}, fill_mode="manual")
    broker = brokers(server)
    count = 520  # more than Alpaca's 500-order page
    for i in range(count):
        broker.submit(order(f"r1-m-{i}", BUY, 1))
    collect(broker, count, timeout=20.0)
    server.requests.clear()

    for placed in server.orders:
        server.fill(placed["client_order_id"])
    fills = collect(broker, count, timeout=20.0)

    assert {e.kind for e in fills} == {FILL}
    assert sorted(int(e.client_order_id.rsplit("-", 1)[1]) for e in fills) == list(range(count))
    assert {path for _, path in server.requests} == {"/v2/orders"}  # no per-order lookups


def test_a_slow_answer_times_out_and_the_order_is_found_later(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0})
    broker = brokers(server, timeout=0.1, max_retries=1)
    server.latency = 0.3  # the order lands, every answer comes too late

    broker.submit(order("r1-m-1", BUY, 10))
    deadline = time.monotonic() + 5
    while not broker.executions:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server.latency = 0.0
    got = collect(broker, 3)

    assert got[0].kind is ExecType.REJECTED
    assert "ReadTimeout" in got[0].reason
    assert [brief(e) for e in got[1:]] == [
        ("r1-m-1", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-1", FILL, BUY, 10, 100.0, ""),
    ]
    assert len(server.orders) == 1


def test_time_in_force_and_type_reach_alpaca(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 1))
    broker.submit(order("r1-m-2", BUY, 2, tif=Tif.OPG))
    broker.submit(order("r1-m-3", BUY, 3, limit_price=99.5, tif=Tif.CLS))
    broker.submit(order("r1-m-4", BUY, 4, limit_price=99.0, tif=Tif.DAY))
    collect(broker, 4)
    assert [
        (o["client_order_id"], o["type"], o["time_in_force"], o["limit_price"])
        for o in server.orders
    ] == [
        ("r1-m-1", "market", "day", None),
        ("r1-m-2", "market", "opg", None),
        ("r1-m-3", "limit", "cls", "99.5"),
        ("r1-m-4", "limit", "day", "99"),
    ]


def test_auction_orders_wait_for_their_auction(servers, brokers) -> None:
    prices = {"SPY": 100.0}
    server = servers(fill_price=prices)  # immediate mode: a day order would fill at once
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 5, tif=Tif.OPG))
    broker.submit(order("r1-m-2", BUY, 5, limit_price=101.0, tif=Tif.CLS))
    broker.submit(order("r1-m-3", BUY, 5, limit_price=99.0, tif=Tif.CLS))
    assert [e.kind for e in collect(broker, 3)] == [ACCEPTED] * 3
    prices["SPY"] = 100.5
    server.auction("opg")
    assert [brief(e) for e in collect(broker, 1)] == [("r1-m-1", FILL, BUY, 5, 100.5, "")]
    prices["SPY"] = 100.75
    server.auction("cls")
    assert sorted(brief(e) for e in collect(broker, 2)) == [
        ("r1-m-2", FILL, BUY, 5, 100.75, ""),
        ("r1-m-3", ExecType.CANCELED, BUY, 0, 0.0, "canceled"),
    ]
    assert broker.positions() == {"SPY": 10}


def test_ioc_remainder_is_canceled_at_once(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 50.0}, fill_mode="partial", allow_short=True)
    broker = brokers(server)
    broker.submit(order("r1-m-1", SELL, 9, tif=Tif.IOC))
    broker.submit(order("r1-m-2", BUY, 9, limit_price=49.0, tif=Tif.IOC))  # not marketable
    assert [brief(e) for e in collect(broker, 5)] == [
        ("r1-m-1", ACCEPTED, SELL, 0, 0.0, ""),
        ("r1-m-1", PARTIAL, SELL, 4, 50.0, ""),
        ("r1-m-1", ExecType.CANCELED, SELL, 0, 0.0, "canceled"),
        ("r1-m-2", ACCEPTED, BUY, 0, 0.0, ""),
        ("r1-m-2", ExecType.CANCELED, BUY, 0, 0.0, "canceled"),
    ]
    assert server.positions == {"SPY": -4}


def test_cancel_order_cancels_a_working_order_and_leaves_an_ended_one(servers, brokers) -> None:
    server = servers(fill_price={"SPY": 100.0}, fill_mode="manual")
    broker = brokers(server)
    broker.submit(order("r1-m-1", BUY, 5, limit_price=99.0))
    broker.submit(order("r1-m-2", BUY, 5))
    collect(broker, 2)
    server.fill("r1-m-2")
    assert [brief(e) for e in collect(broker, 1)] == [("r1-m-2", FILL, BUY, 5, 100.0, "")]
    broker.cancel_order("r1-m-1", 0)
    broker.cancel_order("r1-m-2", 0)  # filled already: nothing to cancel
    broker.cancel_order("r1-m-9", 0)  # never sent
    assert [brief(e) for e in collect(broker, 1)] == [
        ("r1-m-1", ExecType.CANCELED, BUY, 0, 0.0, "canceled")
    ]
    assert [(o["client_order_id"], o["status"]) for o in server.orders] == [
        ("r1-m-1", "canceled"),
        ("r1-m-2", "filled"),
    ]
