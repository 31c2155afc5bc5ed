"""Recovery after a crash: the ledger is reconciled with the broker, what was left open is
flattened once, and the dead run is marked crashed. Real SQLite ledgers, the real Alpaca
broker over HTTP to the project's test server, and a real SIGKILL of a session process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from flows.session import trading_session
from tests.alpaca_server import AlpacaTestServer
from tests.ledger_probe import session_process
from tradeday.brokers.alpaca import AlpacaPaperBroker
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import parse_session_config
from tradeday.events import Side
from tradeday.ledger import Ledger
from tradeday.records import (
    Batch,
    FillRecord,
    MarkRecord,
    OrderRecord,
    OrderStatus,
    PositionRecord,
)
from tradeday.recovery import recover
from tradeday.wiring import Credentials, account_of

KEY, SECRET = "fake-key-recovery-1", "recovery-test-secret"
RUN = "td-20130903-deadbeef"
TS = 1_378_215_000_000_000_000  # 2013-09-03 13:30 UTC, the crashed replay's tick time


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def start_crashed_run(ledger: Ledger, run_id: str, broker: str, account: str, pid: int) -> None:
    ledger.start_run(
        run_id=run_id,
        session_date="2013-09-03",
        model="volume_modulo",
        params={},
        symbols=["ES"],
        feed="replay",
        broker=broker,
        account=account,
        started_ns=time.time_ns() - 60 * 10**9,
        heartbeat_ns=time.time_ns(),
        pid=pid,
    )


def order_row(
    run_id: str, n: int, side: str, qty: int, status: str, filled: int, price: float
) -> OrderRecord:
    return OrderRecord(
        f"{run_id}-{n}",
        run_id,
        "volume_modulo",
        "ES",
        Side(side),
        qty,
        TS + n,
        OrderStatus(status),
        filled_qty=filled,
        avg_fill_price=price if filled else 0.0,
    )


def fill_row(run_id: str, n: int, side: str, qty: int, price: float) -> FillRecord:
    return FillRecord(
        run_id, "volume_modulo", f"{run_id}-{n}", "ES", Side(side), qty, price, 0.0, TS + n
    )


def position_row(run_id: str, qty: int, mark: float) -> PositionRecord:
    return PositionRecord(run_id, "ES", "volume_modulo", qty, 100.0, mark, 0.0, 0.0, TS + 9)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield led
    led.close()


# -- simulated broker: the ledger is all there is ------------------------------------------


def test_simulated_recovery_flattens_from_the_ledger_and_marks_the_run_crashed(ledger):
    start_crashed_run(ledger, RUN, "simulated", "simulated", dead_pid())
    batch = Batch(
        new_orders=[
            order_row(RUN, 1, "buy", 10, "filled", 10, 100.0),
            order_row(RUN, 2, "sell", 3, "filled", 3, 101.0),
            order_row(RUN, 3, "buy", 5, "submitted", 0, 0.0),  # in flight at the crash
        ],
        fills=[fill_row(RUN, 1, "buy", 10, 100.0), fill_row(RUN, 2, "sell", 3, 101.0)],
        positions=[position_row(RUN, 7, 102.0)],
    )
    ledger.write(batch, RUN)

    done = recover(ledger, SimulatedBroker(), "simulated", by="td-next")

    assert [(r.run_id, r.closed, r.fills, r.left) for r in done] == [(RUN, {"ES": -7}, 1, {})]
    orders = {o.client_order_id: o for o in ledger.orders(RUN)}
    assert (orders[f"{RUN}-3"].status, orders[f"{RUN}-3"].reason) == (
        "canceled",
        "lost in the crash",
    )
    rec = orders[f"{RUN}-recover-ES-1"]
    assert (rec.side, rec.qty, rec.status, rec.avg_fill_price, rec.purpose, rec.ts) == (
        "sell",
        7,
        "filled",
        102.0,  # the last mark the run recorded
        "recovery",
        TS + 3,  # the crashed replay's last tick time, not the wall clock
    )
    assert sum(f.qty if f.side == "buy" else -f.qty for f in ledger.fills(RUN)) == 0
    (pos,) = ledger.positions(RUN)
    assert (pos.qty, pos.realized) == (0, 3.0 + 14.0)
    run = ledger.run(RUN)
    assert (run.status, run.message) == (
        "crashed",
        "crashed; recovered by td-next; closed {'ES': -7}",
    )
    assert recover(ledger, SimulatedBroker(), "simulated") == []  # done once, not again


def test_simulated_recovery_closes_at_the_latest_mark_not_the_last_fill(ledger):
    minute = 60 * 10**9
    start_crashed_run(ledger, RUN, "simulated", "simulated", dead_pid())
    batch = Batch(
        new_orders=[order_row(RUN, 1, "buy", 10, "filled", 10, 100.0)],
        fills=[fill_row(RUN, 1, "buy", 10, 100.0)],
        # the flush after the fill; the minute marks went on for two more minutes
        positions=[PositionRecord(RUN, "ES", "volume_modulo", 10, 100.0, 100.87, 0.0, 0.0, TS + 2)],
        marks=[MarkRecord(RUN, "ES", TS, 100.87), MarkRecord(RUN, "ES", TS + minute, 98.29)],
    )
    ledger.write(batch, RUN)

    (done,) = recover(ledger, SimulatedBroker(), "simulated", by="td-next")

    assert (done.closed, done.fills, done.left) == ({"ES": -10}, 1, {})
    (rec,) = [o for o in ledger.orders(RUN) if o.purpose == "recovery"]
    assert (rec.side, rec.qty, rec.avg_fill_price, rec.ts) == ("sell", 10, 98.29, TS + minute)
    (pos,) = ledger.positions(RUN)
    assert (pos.qty, pos.realized, pos.mark) == (0, pytest.approx(-17.1), 98.29)


def test_a_live_run_and_other_accounts_are_left_alone(ledger):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start_crashed_run(ledger, "td-20130903-alive000", "simulated", "simulated", alive.pid)
        start_crashed_run(ledger, "td-20130903-otheracc", "alpaca", "elsewhere", dead_pid())
        assert recover(ledger, SimulatedBroker(), "simulated") == []
        assert {r.status for r in ledger.runs()} == {"running"}
    finally:
        alive.kill()
        alive.wait()


# -- Alpaca: the broker knows what the ledger missed ---------------------------------------


@pytest.fixture
def server() -> Iterator[AlpacaTestServer]:
    srv = AlpacaTestServer(
        key_id=KEY, secret_key=SECRET, fill_price={"ES": 100.0}, buying_power=1e9, allow_short=True
    )
    yield srv
    srv.stop()


def place(server: AlpacaTestServer, cid: str, side: OrderSide, qty: int) -> None:
    """An order as the crashed process sent it, straight through alpaca-py."""
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.url)
    client.submit_order(
        MarketOrderRequest(
            symbol="ES", qty=qty, side=side, time_in_force=TimeInForce.DAY, client_order_id=cid
        )
    )


def alpaca_account(server: AlpacaTestServer) -> str:
    config = parse_session_config({"broker": {"kind": "alpaca", "alpaca_url": server.url}})
    return account_of(config, Credentials(KEY, SECRET))


def posts(server: AlpacaTestServer) -> int:
    return sum(1 for r in server.requests if r == ("POST", "/v2/orders"))


@pytest.mark.slow
def test_alpaca_recovery_takes_what_the_ledger_missed_from_the_broker(ledger, server):
    account = alpaca_account(server)
    start_crashed_run(ledger, RUN, "alpaca", account, dead_pid())
    place(server, f"{RUN}-1", OrderSide.BUY, 10)  # recorded and filled
    place(server, f"{RUN}-2", OrderSide.BUY, 5)  # recorded as submitted; filled after the flush
    server.fill_mode = "manual"
    place(server, f"{RUN}-3", OrderSide.BUY, 4)  # never recorded; still working at the crash
    server.fill_mode = "immediate"
    ledger.write(
        Batch(
            new_orders=[
                order_row(RUN, 1, "buy", 10, "filled", 10, 100.0),
                order_row(RUN, 2, "buy", 5, "submitted", 0, 0.0),
            ],
            fills=[fill_row(RUN, 1, "buy", 10, 100.0)],
            positions=[position_row(RUN, 10, 100.0)],
        ),
        RUN,
    )
    broker = AlpacaPaperBroker(KEY, SECRET, base_url=server.url, poll_interval=0.02)
    try:
        (done,) = recover(ledger, broker, account, by="td-next")
    finally:
        broker.close()

    # -2's fill and -3 came from the broker: -3 was cancelled there, then one sell of 15
    assert (done.closed, done.synced, done.fills, done.left) == ({"ES": -15}, 3, 1, {})
    assert [
        (o.client_order_id, o.side, o.qty, o.status, o.filled_qty) for o in ledger.orders(RUN)
    ] == [
        (f"{RUN}-1", "buy", 10, "filled", 10),
        (f"{RUN}-2", "buy", 5, "filled", 5),
        (f"{RUN}-3", "buy", 4, "canceled", 0),
        (f"{RUN}-recover-ES-1", "sell", 15, "filled", 15),
    ]
    assert [(f.client_order_id, f.qty, f.price) for f in ledger.fills(RUN)] == [
        (f"{RUN}-1", 10, 100.0),
        (f"{RUN}-2", 5, 100.0),
        (f"{RUN}-recover-ES-1", 15, 100.0),
    ]
    assert [p.qty for p in ledger.positions(RUN)] == [0]
    assert ledger.run(RUN).status == "crashed"
    assert server.positions == {}
    ids = [o["client_order_id"] for o in server.orders]
    assert len(ids) == len(set(ids)) == posts(server) == 4


@pytest.mark.slow
def test_a_recovery_that_crashed_itself_is_not_sent_twice(ledger, server):
    account = alpaca_account(server)
    start_crashed_run(ledger, RUN, "alpaca", account, dead_pid())
    place(server, f"{RUN}-1", OrderSide.BUY, 10)
    place(server, f"{RUN}-recover-ES-1", OrderSide.SELL, 10)  # sent, then the recovery died
    ledger.write(
        Batch(
            new_orders=[order_row(RUN, 1, "buy", 10, "filled", 10, 100.0)],
            fills=[fill_row(RUN, 1, "buy", 10, 100.0)],
            positions=[position_row(RUN, 10, 100.0)],
        ),
        RUN,
    )
    broker = AlpacaPaperBroker(KEY, SECRET, base_url=server.url, poll_interval=0.02)
    try:
        (done,) = recover(ledger, broker, account)
    finally:
        broker.close()
    assert (done.closed, done.synced, done.left) == ({}, 2, {})
    assert posts(server) == 2  # nothing new was sent
    recovered = [o for o in ledger.orders(RUN) if o.purpose == "recovery"]
    assert [(o.client_order_id, o.status) for o in recovered] == [(f"{RUN}-recover-ES-1", "filled")]
    assert server.positions == {}


# -- SIGKILL a running session, then the next session recovers -----------------------------


@pytest.mark.slow
def test_sigkill_mid_stream_then_the_next_session_recovers(
    prefect_harness, monkeypatch, tmp_path, open_fixture, session_paths
):
    from prefect.settings import PREFECT_API_URL

    with AlpacaTestServer(
        key_id=KEY, secret_key=SECRET, fill_price={"ES": 1646.5}, buying_power=1e9, allow_short=True
    ) as server:
        _kill_and_recover(
            server, monkeypatch, tmp_path, open_fixture, session_paths, PREFECT_API_URL.value()
        )


def _kill_and_recover(server, monkeypatch, tmp_path, open_fixture, session_paths, api_url):

    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    raw = {
        # orders on about half the prints, so some are in flight between ledger flushes
        "model": {"name": "volume_modulo", "sell_modulus": 2, "buy_modulus": 3, "quantity": 1},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        "broker": {"kind": "alpaca", "alpaca_url": server.url},
        "risk": {"max_orders_per_minute": 100_000},
        **session_paths,
    }
    # the harness's API: no temporary Prefect server is started, so none can be orphaned
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp_path)}
    with session_process(raw, tmp_path, env, fills=40, timeout=180) as (proc, _):
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    ledger = Ledger(session_paths["ledger_url"])
    (crashed,) = ledger.runs()
    assert crashed.status == "running"  # as the killed process left it
    at_kill = posts(server)

    # the next session, on the same account: its recover task runs before it trades
    # at full speed and the model's default moduli: a few dozen orders, not thousands, so
    # its flatten does not wait on a backlog of the test server's fills on a loaded machine
    rest = {
        **raw,
        "model": {"name": "volume_modulo", "quantity": 1},
        "feed": {"recording": str(open_fixture)},
    }
    result = trading_session(config=parse_session_config(rest), session_date=date(2013, 9, 3))

    assert (result["status"], result["final_positions"]) == ("completed", {})
    crashed = ledger.run(crashed.run_id)
    assert crashed.status == "crashed"
    assert crashed.message.startswith("crashed; recovered")
    with get_client(sync_client=True) as client:  # the killed run's flow run, left Running
        state = client.read_flow_run(UUID(crashed.flow_run_id)).state
    assert state is not None and state.type is StateType.CRASHED
    assert state.message == crashed.message
    fills = ledger.fills(crashed.run_id)
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0  # its book ends flat
    assert all(p.qty == 0 for p in ledger.positions(crashed.run_id))
    assert not [o for o in ledger.orders(crashed.run_id) if o.status in ("submitted", "accepted")]
    ledger.close()

    # at the broker: nothing of either run is left, and no client_order_id appears twice
    mine = [o for o in server.orders if o["client_order_id"].startswith(f"{crashed.run_id}-")]
    assert sum(int(o["filled_qty"]) * (1 if o["side"] == "buy" else -1) for o in mine) == 0
    assert not [o for o in server.orders if o["status"] in ("new", "accepted", "partially_filled")]
    assert server.positions == {}
    ids = [o["client_order_id"] for o in server.orders]
    assert len(ids) == len(set(ids)) == posts(server)
    assert posts(server) > at_kill  # recovery and the new session did send orders
