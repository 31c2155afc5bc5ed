"""Alpaca's ``trade_updates`` stream: the local test server, the broker, and the hub.

The test server's stream is checked with alpaca-py's own ``TradingStream``; the broker and
the hub with real websockets and real HTTP against that server.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import TradeEvent
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.alpaca_server import AlpacaTestServer
from tests.conftest import OPEN_FIXTURE, free_port, wait_until
from tests.test_hub import ALPACA_KEY, ALPACA_SECRET
from tests.test_hub import SECRET as HUB_SECRET
from tradeday import recording
from tradeday.brokers.alpaca import AlpacaPaperBroker
from tradeday.brokers.base import BrokerOrder, ExecType, Execution
from tradeday.brokers.trade_updates import StreamEndpoint, TradeUpdatesClient, stream_url
from tradeday.calendar import session_window
from tradeday.config import ConfigError, parse_session_config
from tradeday.engine import order_prefix
from tradeday.events import Side
from tradeday.hub import HUB_KEY, Hub
from tradeday.replay.server import ReplayServer
from tradeday.session import SessionResult, TradingSession
from tradeday.wiring import Credentials, trade_updates_endpoint

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


# -- the broker ---------------------------------------------------------------------------


@pytest.fixture
def brokers() -> Iterator[Callable[..., AlpacaPaperBroker]]:
    made: list[AlpacaPaperBroker] = []

    def make(server: AlpacaTestServer, **kwargs: Any) -> AlpacaPaperBroker:
        endpoint = StreamEndpoint(server.stream_url, KEY, SECRET)
        options: dict[str, Any] = {"poll_interval": 0.05, "backoff": 0.01, "max_backoff": 0.2}
        broker = AlpacaPaperBroker(
            KEY, SECRET, base_url=server.url, trade_updates=endpoint, **(options | kwargs)
        )
        made.append(broker)
        broker.start()
        wait_until(lambda: broker.streaming, 30, "the broker's stream listening", 0.02)
        return broker

    yield make
    for broker in made:
        broker.close()


def order(cid: str, side: Side, qty: int) -> BrokerOrder:
    return BrokerOrder(client_order_id=cid, symbol="SPY", side=side, qty=qty, ts=0)


def take(broker: AlpacaPaperBroker, count: int, timeout: float = 30.0) -> list[Execution]:
    got: list[Execution] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"timed out with {got}"
        while broker.executions:
            got.append(broker.executions.popleft())
        time.sleep(0.01)
    return got


def kinds(executions: list[Execution]) -> list[tuple[str, str, int, float]]:
    return [(e.client_order_id, e.kind.value, e.qty, e.price) for e in executions]


def test_fills_come_from_the_stream_with_no_polling(server: AlpacaTestServer, brokers) -> None:
    """With the stream listening and reconciliation an hour away, every fill and the cancel
    arrive through trade_updates, at the fill's own price; no GET of orders is sent.
    Another program's order on the same account is ignored."""
    broker = brokers(server, reconcile_interval=3600.0)
    broker.submit(order("r1-1", Side.BUY, 10))
    assert kinds(take(broker, 1)) == [("r1-1", "accepted", 0, 0.0)]
    server.fill("r1-1", qty=4, price=101.5)
    server.fill("r1-1", price=102.25)
    got = take(broker, 2)
    broker.submit(order("r1-2", Side.BUY, 3))
    TradingClient(KEY, SECRET, url_override=server.url).submit_order(
        MarketOrderRequest(
            symbol="SPY", qty=1, side="buy", time_in_force="day", client_order_id="other-1"
        )
    )
    server.fill("other-1")
    got += take(broker, 1)
    server.cancel("r1-2")
    got += take(broker, 1)
    time.sleep(0.5)  # anything more (a duplicate, the other program's fill) would be here now
    got += list(broker.executions)
    assert kinds(got) == [
        ("r1-1", "partial_fill", 4, 101.5),
        ("r1-1", "fill", 6, 102.25),
        ("r1-2", "accepted", 0, 0.0),
        ("r1-2", "canceled", 0, 0.0),
    ]
    assert (broker.stats.fills_from_stream, broker.stats.fills_from_poll) == (2, 0)
    assert broker.stats.polls == 0
    assert not [r for r in server.requests if r == ("GET", "/v2/orders")]


def test_stream_and_polling_together_apply_each_fill_once(
    server: AlpacaTestServer, brokers
) -> None:
    """Reconciling every 20 ms while the stream also reports: both paths see every fill;
    each share is reported once (the executions add up to the server's fills exactly)."""
    broker = brokers(server, reconcile_interval=0.02)
    cids = [f"r2-{n}" for n in range(1, 21)]
    for cid in cids:
        broker.submit(order(cid, Side.BUY, 10))
    take(broker, len(cids))
    for n, cid in enumerate(cids):
        server.fill(cid, qty=3, price=100 + n)
        server.fill(cid, qty=3, price=100.5 + n)
        server.fill(cid, price=101 + n)
    wait_until(lambda: not broker._working, 30, "every order filled", 0.02)
    got = list(broker.executions)
    fills = [e for e in got if e.kind in (ExecType.FILL, ExecType.PARTIAL_FILL)]
    for order_json in server.orders:
        mine = [e for e in fills if e.client_order_id == order_json["client_order_id"]]
        assert sum(e.qty for e in mine) == 10
        assert sum(e.qty * e.price for e in mine) == pytest.approx(
            10 * float(order_json["filled_avg_price"]), abs=1e-6
        )
        assert [e.kind for e in mine][-1] is ExecType.FILL
    s = broker.stats
    assert s.fills_from_stream + s.fills_from_poll == len(fills)
    # Which path sees a fill first is a race (under load the 20 ms poll may win them all);
    # what must hold is that every event arrived and was applied or recognised as stale.
    sent = server.trade_updates
    wait_until(lambda: s.stream_events == len(sent), 10, "every event delivered", 0.02)
    fill_events = sum(1 for d in sent if d["event"] in ("fill", "partial_fill"))
    assert fill_events == 60 and s.polls > 0


def test_a_cut_stream_falls_back_to_polling_and_reconciles_when_back(
    server: AlpacaTestServer, brokers
) -> None:
    """The stream is cut (and refused) with an order working: its fill arrives by polling.
    Back, the stream carries fills again; no fill is reported twice."""
    broker = brokers(server, reconcile_interval=3600.0)
    broker.submit(order("r3-1", Side.BUY, 5))
    take(broker, 1)
    server.fill("r3-1", price=50.0)
    take(broker, 1)
    assert broker.stats.fills_from_stream == 1
    server.cut_trade_updates(refuse=True)
    wait_until(lambda: not broker.streaming, 30, "the broker to see the cut", 0.02)
    broker.submit(order("r3-2", Side.SELL, 5))
    take(broker, 1)
    server.fill("r3-2", price=51.0)
    polled = take(broker, 1)
    assert kinds(polled) == [("r3-2", "fill", 5, 51.0)]
    assert broker.stats.fills_from_poll == 1
    server.restore_trade_updates()
    wait_until(lambda: broker.streaming, 60, "the stream back", 0.05)
    broker.submit(order("r3-3", Side.BUY, 2))
    take(broker, 1)
    server.fill("r3-3", price=52.0)
    assert kinds(take(broker, 1)) == [("r3-3", "fill", 2, 52.0)]
    time.sleep(0.5)
    assert not broker.executions
    assert (broker.stats.fills_from_stream, broker.stats.fills_from_poll) == (2, 1)
    assert server.positions == {"SPY": 2}


# -- the hub ------------------------------------------------------------------------------


@contextmanager
def hub_with_trade_updates(server: AlpacaTestServer) -> Iterator[Hub]:
    """A hub sharing ``server``'s trade_updates (its market-data upstream is not needed)."""
    hub = Hub(
        f"ws://127.0.0.1:{free_port()}",
        ALPACA_KEY,
        ALPACA_SECRET,
        secret=HUB_SECRET,
        backoff_base=0.05,
        seed=1,
        trade_updates=StreamEndpoint(server.stream_url, KEY, SECRET),
    )
    with hub:
        relay = hub.trade_updates
        assert relay is not None
        wait_until(lambda: relay.upstream.listening, 30, "the hub's upstream listening", 0.02)
        yield hub


class Listener:
    """Our stream client on the hub, as a session's broker runs it, keeping every event."""

    def __init__(self, hub: Hub, prefix: str | None, secret: str = HUB_SECRET) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: list[bool] = []
        endpoint = StreamEndpoint(stream_url(hub.url), HUB_KEY, secret, prefix=prefix)
        self.client = TradeUpdatesClient(endpoint, self.events.append, self.states.append)
        self.client.start()

    def cids(self) -> list[tuple[str, str]]:
        return [(e["order"]["client_order_id"], e["event"]) for e in self.events]


def test_the_hub_routes_each_event_to_the_session_whose_prefix_it_carries(
    server: AlpacaTestServer,
) -> None:
    """One upstream connection; sessions with prefixes get exactly their orders' events in
    order; alpaca-py's TradingStream with the hub's credential (no prefix) gets them all;
    a wrong local secret is unauthorized."""
    with hub_with_trade_updates(server) as hub:
        relay = hub.trade_updates
        assert relay is not None
        a, b = Listener(hub, "runa-"), Listener(hub, "runb-")
        wrong = Listener(hub, "runc-", secret="not-the-secret")
        everything: list[TradeUpdate] = []
        stream = TradingStream(HUB_KEY, HUB_SECRET, url_override=stream_url(hub.url))

        async def on_update(update: TradeUpdate) -> None:
            everything.append(update)

        stream.subscribe_trade_updates(on_update)
        runner = threading.Thread(target=stream.run, name="trading-stream", daemon=True)
        runner.start()
        try:
            wait_until(lambda: len(relay.listeners) == 3, 30, "three listeners", 0.02)
            assert sorted(relay.listeners, key=str) == sorted(["runa-", "runb-", None], key=str)
            client = TradingClient(KEY, SECRET, url_override=server.url)
            for cid in ("runa-1", "runb-1", "runa-2", "other-1"):
                client.submit_order(
                    MarketOrderRequest(
                        symbol="SPY", qty=2, side="buy", time_in_force="day", client_order_id=cid
                    )
                )
                server.fill(cid, qty=1, price=10.0)
                server.fill(cid, price=11.0)
            wait_until(lambda: len(everything) == 12, 30, "every event at TradingStream", 0.02)
            wait_until(lambda: len(a.events) == 6 and len(b.events) == 3, 30, "routed", 0.02)
        finally:
            stream.stop()
            runner.join(10)
            for listener in (a, b, wrong):
                listener.client.stop()
        steps = ["new", "partial_fill", "fill"]
        assert a.cids() == [(c, e) for c in ("runa-1", "runa-2") for e in steps]
        assert b.cids() == [("runb-1", e) for e in steps]
        assert [u.order.client_order_id for u in everything] == [
            c for c in ("runa-1", "runb-1", "runa-2", "other-1") for _ in steps
        ]
        assert a.events == [
            e for e in server.trade_updates if e["order"]["client_order_id"][:5] == "runa-"
        ]
        assert not wrong.events and wrong.states == [] and relay.stats.refused >= 1
        assert (relay.stats.routed, relay.stats.unrouted) == (9 + 12, 0)
        assert server.trade_update_listeners == 1  # the hub's one upstream connection


def test_an_upstream_cut_closes_the_hub_sessions_until_it_is_back(
    server: AlpacaTestServer,
) -> None:
    """The hub's upstream trade_updates is cut: each session is closed (so its broker polls)
    and refused while the upstream is down; both listen again once it is back."""
    with hub_with_trade_updates(server) as hub:
        relay = hub.trade_updates
        assert relay is not None
        a = Listener(hub, "runa-")
        wait_until(lambda: a.states == [True], 30, "listening", 0.02)
        server.cut_trade_updates(refuse=True)
        wait_until(lambda: a.states == [True, False], 30, "the session closed", 0.02)
        time.sleep(1.0)
        assert a.states == [True, False] and relay.stats.refused >= 1
        server.restore_trade_updates()
        wait_until(lambda: a.states == [True, False, True], 60, "listening again", 0.05)
        TradingClient(KEY, SECRET, url_override=server.url).submit_order(
            MarketOrderRequest(
                symbol="SPY", qty=1, side="buy", time_in_force="day", client_order_id="runa-9"
            )
        )
        wait_until(lambda: a.cids() == [("runa-9", "new")], 30, "the event after the gap", 0.02)
        a.client.stop()


def test_a_slow_trade_updates_session_is_cut_with_1008_and_the_others_never_wait(
    server: AlpacaTestServer,
) -> None:
    """A session that stops reading (a 4 KiB receive buffer, never read) is cut once its
    queue passes ``max_pending``; a session beside it gets every one of its events, in
    order, while the slow one is stuck and after it is cut."""
    with hub_with_trade_updates(server) as hub:
        relay = hub.trade_updates
        assert relay is not None
        relay.max_pending = 50
        fast = Listener(hub, "runa-")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(hub.url.rsplit(":", 1)[1].split("/")[0])))
        slow = connect(stream_url(hub.url), sock=sock, max_size=None)
        auth = {"key_id": HUB_KEY, "secret_key": HUB_SECRET}
        slow.send(json.dumps({"action": "authenticate", "data": auth}))
        slow.recv(10)
        slow.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        slow.recv(10)
        wait_until(lambda: len(relay.listeners) == 2, 30, "two listeners", 0.02)
        client = TradingClient(KEY, SECRET, url_override=server.url)
        for cid, qty in (("runa-1", 100), ("runs-1", 100_000)):  # resting limits, filled by hand
            client.submit_order(
                LimitOrderRequest(
                    symbol="SPY",
                    qty=qty,
                    side="buy",
                    time_in_force="day",
                    limit_price=0.01,
                    client_order_id=cid,
                )
            )
        fills = 0
        while not relay.stats.slow_cuts and fills < 100_000:  # bounded: 70 MB of events
            server.fill("runs-1", qty=1, price=0.01)
            fills += 1
            if fills % 1_000 == 0:
                server.fill("runa-1", qty=1, price=0.01)
        assert relay.stats.slow_cuts == 1
        # the cut is counted first, then the session leaves the relay's list (its loop)
        wait_until(lambda: relay.listeners == ("runa-",), 30, "the slow session unlisted", 0.05)
        server.fill("runa-1", price=0.01)  # after the cut: the fast session still gets it
        mine = [e for e in server.trade_updates if e["order"]["client_order_id"] == "runa-1"]
        wait_until(lambda: len(fast.events) == len(mine), 60, "every fast event", 0.02)
        assert fast.events == mine and mine[-1]["event"] == "fill"
        assert [e["event"] for e in mine] == ["new"] + ["partial_fill"] * (fills // 1_000) + [
            "fill"
        ]
        received = 0
        with pytest.raises(ConnectionClosed):
            while True:  # what was already on its way, then the cut
                slow.recv(30)
                received += 1
        assert (slow.protocol.close_rcvd.code, slow.protocol.close_rcvd.reason) == (
            1008,
            "slow client",
        )
        assert 0 < received < fills + 1
        fast.client.stop()
        slow.close()
        assert server.trade_update_listeners == 1  # still the hub's one upstream connection


# -- whole sessions -----------------------------------------------------------------------

DAY = date(2013, 9, 3)
PRICE = 1646.5
TRADES = recording.load(OPEN_FIXTURE)


@pytest.fixture
def es_server() -> Iterator[AlpacaTestServer]:
    with AlpacaTestServer(
        key_id=KEY, secret_key=SECRET, fill_price={"ES": PRICE}, buying_power=1e9, allow_short=True
    ) as srv:
        yield srv


def alpaca_session(tmp_path: Path, server: AlpacaTestServer, model: str, **feed: Any):
    config = parse_session_config(
        {
            "model": {"name": model},
            "symbols": ["ES"],
            "feed": feed,
            "broker": {"kind": "alpaca", "alpaca_url": server.url, "trade_updates": True},
            "ledger_url": f"sqlite:///{tmp_path / model / 'ledger.sqlite'}",
            "report_path": str(tmp_path / model / "r.duckdb"),
        }
    )
    (tmp_path / model).mkdir(exist_ok=True)
    return TradingSession(config, session_window(DAY), credentials=Credentials(KEY, SECRET))


def run(s: TradingSession) -> SessionResult:
    try:
        s.run()
    finally:
        result = s.shutdown("completed")
    return result


def same_fills_as_the_server(s: TradingSession, server: AlpacaTestServer) -> int:
    """The ledger's fills are the server's, order by order (quantity and average price);
    no share twice, none missing. Returns how many fill rows the ledger has."""
    assert s.ledger is not None
    prefix = order_prefix(s.run_id)
    at_server: dict[str, list[dict[str, Any]]] = {}
    for o in server.orders:  # an order split at the account's zero is sent as -legN parts
        if o["client_order_id"].startswith(prefix):
            parent = re.sub(r"-leg\d+$", "", o["client_order_id"])
            at_server.setdefault(parent, []).append(o)
    fills = s.ledger.fills(s.run_id)
    assert at_server and {f.client_order_id for f in fills} == set(at_server)
    for cid, legs in at_server.items():
        mine = [f for f in fills if f.client_order_id == cid]
        assert all(int(o["filled_qty"]) == int(o["qty"]) for o in legs)
        assert sum(f.qty for f in mine) == sum(int(o["qty"]) for o in legs)
        assert sum(f.qty * f.price for f in mine) == pytest.approx(
            sum(int(o["qty"]) * float(o["filled_avg_price"]) for o in legs)
        )
    assert sum(f.signed_qty for f in fills) == 0
    return len(fills)


def spy_on_events(s: TradingSession) -> list[str]:
    """The client_order_ids of the trade updates the session's broker receives (a spy on
    the real stream client: the events still go where they went)."""
    seen: list[str] = []
    stream = s.broker._stream  # type: ignore[attr-defined]
    forward = stream._on_event

    def record(data: dict[str, Any]) -> None:
        seen.append(data["order"]["client_order_id"])
        forward(data)

    stream._on_event = record
    return seen


def test_two_alpaca_sessions_through_the_hub_get_only_their_own_trade_updates(
    tmp_path: Path, es_server: AlpacaTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models on one account through one hub: market data and trade updates each over
    the hub's one upstream connection. Each session's broker receives exactly its own
    orders' events and takes its fills from them; each ledger equals the server's fills."""
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", HUB_SECRET)
    port = free_port()
    hub = Hub(
        f"ws://127.0.0.1:{port}",
        ALPACA_KEY,
        ALPACA_SECRET,
        secret=HUB_SECRET,
        backoff_base=0.05,
        seed=1,
        trade_updates=StreamEndpoint(es_server.stream_url, KEY, SECRET),
    )
    with hub:
        relay = hub.trade_updates
        assert relay is not None
        wait_until(lambda: relay.upstream.listening, 30, "the hub's upstream listening", 0.02)
        sessions = [
            alpaca_session(tmp_path, es_server, m, source="hub", url=hub.url)
            for m in ("volume_modulo", "mean_reversion")
        ]
        seen = [spy_on_events(s) for s in sessions]
        results: dict[str, SessionResult] = {}
        threads = [
            threading.Thread(target=lambda s=s: results.update({s.model_name: run(s)}))
            for s in sessions
        ]
        for t in threads:
            t.start()
        wait_until(lambda: len(hub._routes) == 2 and len(relay.listeners) == 2, 60, "both", 0.05)
        assert sorted(relay.listeners) == sorted(order_prefix(s.run_id) for s in sessions)
        with ReplayServer(
            TRADES, key=ALPACA_KEY, secret=ALPACA_SECRET, port=port, max_connections=1
        ):
            for t in threads:
                t.join(180)
                assert not t.is_alive()
        assert es_server.trade_update_listeners == 1  # the hub's, for both sessions
    for s, got in zip(sessions, seen, strict=True):
        result = results[s.model_name]
        assert (result.status, result.final_positions) == ("completed", {})
        fills = same_fills_as_the_server(s, es_server)
        prefix = order_prefix(s.run_id)
        assert got and all(cid.startswith(prefix) for cid in got)  # only its own events
        assert s.broker.stats.fills_from_stream > 0  # type: ignore[attr-defined]
        assert s.broker.stats.fills_from_stream + s.broker.stats.fills_from_poll == fills  # type: ignore[attr-defined]
        s.close()
    assert relay.stats.unrouted == 0


def test_a_session_whose_stream_is_cut_mid_session_gets_every_fill_once(
    tmp_path: Path, es_server: AlpacaTestServer
) -> None:
    """A direct session (its broker on the test server's /stream, the default next to
    alpaca_url): the stream is cut as the 8th order arrives and refused until the 16th.
    Fills go on arriving by polling; the ledger equals the server's fills, none twice."""
    es_server.trade_updates_outage = (8, 16)
    s = alpaca_session(tmp_path, es_server, "volume_modulo", recording=str(OPEN_FIXTURE))
    result = run(s)
    assert (result.status, result.final_positions) == ("completed", {})
    fills = same_fills_as_the_server(s, es_server)
    stats = s.broker.stats  # type: ignore[attr-defined]
    assert stats.fills_from_stream > 0 and stats.fills_from_poll > 0
    assert stats.fills_from_stream + stats.fills_from_poll == fills
    assert s.broker.stream_stats.drops >= 1  # type: ignore[attr-defined]
    s.close()


def test_where_a_session_listens_and_bad_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Direct: Alpaca's /stream next to alpaca_url, with the Alpaca keys. Through the hub:
    the hub's /stream, its local credential and the run's prefix, never the Alpaca keys.
    A non-websocket URL is refused naming broker.trade_updates_url; no secret names it."""
    keys = Credentials(KEY, SECRET)

    def endpoint(**raw: Any) -> StreamEndpoint | None:
        return trade_updates_endpoint(parse_session_config(raw), keys, "run7-")

    assert endpoint(broker={"kind": "alpaca"}) is None  # off by default: polling
    direct = endpoint(broker={"kind": "alpaca", "trade_updates": True})
    assert direct == StreamEndpoint("wss://paper-api.alpaca.markets/stream", KEY, SECRET)
    assert endpoint(broker={"kind": "alpaca", "trade_updates": False}) is None
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", HUB_SECRET)
    hub = endpoint(
        broker={"kind": "alpaca", "trade_updates": True},
        feed={"source": "hub", "url": "ws://127.0.0.1:9/v2/hub"},
    )
    assert hub == StreamEndpoint("ws://127.0.0.1:9/stream", HUB_KEY, HUB_SECRET, prefix="run7-")
    assert KEY not in repr(direct) and SECRET not in repr(direct)
    with pytest.raises(ConfigError, match=r"broker\.trade_updates_url: .*not a websocket URL"):
        parse_session_config(
            {"broker": {"kind": "alpaca", "trade_updates_url": "https://x/stream"}}
        )
    monkeypatch.delenv("TRADEDAY_HUB_SECRET")
    with pytest.raises(ValueError, match="set TRADEDAY_HUB_SECRET"):
        endpoint(broker={"kind": "alpaca", "trade_updates": True}, feed={"source": "hub"})
