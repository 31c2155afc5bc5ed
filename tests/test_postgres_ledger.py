"""The ledger on PostgreSQL: a real session and a recovery against a throwaway PostgreSQL 15
cluster (the session-scoped ``postgres_url`` fixture of conftest.py; skipped with a reason
when the server binaries are absent)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import date

import duckdb
import psycopg
import pytest

from flows.session import trading_session
from tradeday import backtest
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import parse_session_config
from tradeday.events import Side
from tradeday.ledger import Ledger
from tradeday.records import Batch, FillRecord, OrderRecord, OrderStatus, PositionRecord
from tradeday.recovery import recover

pytestmark = pytest.mark.slow
DAY = date(2013, 9, 3)


@pytest.fixture(scope="module")
def ledger_url(postgres_url: str) -> str:
    """A database of its own in the shared cluster, so other tests' tables never mix in."""
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_url.rsplit('/', 1)[0]}/{name}"


def test_a_session_writes_its_ledger_to_postgresql(
    prefect_harness, ledger_url, open_fixture, tmp_path
):
    raw = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture)},
        "broker": {"commission_per_share": 0.01},
        "risk": {"max_position": 10},  # refusals too, so every table gets rows
    }
    report = tmp_path / "reports.duckdb"
    result = trading_session(
        config=parse_session_config({**raw, "ledger_url": ledger_url, "report_path": str(report)}),
        session_date=DAY,
    )
    expected = backtest.run(
        raw["model"], DAY, ["ES"], recording=open_fixture, broker=raw["broker"], risk=raw["risk"]
    )
    assert expected.risk_events and expected.fills

    ledger = Ledger(ledger_url)
    assert ledger.engine.dialect.name == "postgresql"
    run = ledger.run(result["run_id"])
    orders = ledger.orders(run.run_id)
    fills = ledger.fills(run.run_id)
    events = ledger.risk_events(run.run_id)
    positions = ledger.positions(run.run_id)
    ledger.close()
    assert (run.status, run.model, run.counters["orders"]) == (
        "completed",
        "volume_modulo",
        len(expected.orders),
    )
    assert [(o.side, o.qty, o.ts, o.status, o.purpose) for o in orders] == [
        (o.side, o.qty, o.ts, o.status, o.purpose) for o in expected.orders
    ]
    assert [(f.side, f.qty, f.price, f.fee, f.ts) for f in fills] == [
        (f.side, f.qty, f.price, f.fee, f.ts) for f in expected.fills
    ]
    assert [(e.ts, e.qty, e.reason) for e in events] == [
        (e.ts, e.qty, e.reason) for e in expected.risk_events
    ]
    assert [(p.symbol, p.qty) for p in positions] == [("ES", 0)]

    con = duckdb.connect(str(report), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM orders").fetchone() == (len(orders),)
        assert con.execute("SELECT count(*) FROM risk_events").fetchone() == (len(events),)
    finally:
        con.close()


def test_recovery_on_postgresql(ledger_url):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = f"td-20130903-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(ledger_url)
    ledger.start_run(
        run_id=run_id,
        session_date="2013-09-03",
        model="volume_modulo",
        params={"name": "volume_modulo"},
        symbols=["ES"],
        feed="replay",
        broker="simulated",
        account="simulated",
        started_ns=time.time_ns(),
        pid=dead.pid,
    )
    ts = 1_378_215_000_000_000_000
    order = OrderRecord(
        f"{run_id}-1",
        run_id,
        "volume_modulo",
        "ES",
        Side.SELL,
        5,
        ts,
        OrderStatus.FILLED,
        filled_qty=5,
        avg_fill_price=1646.5,
    )
    fill = FillRecord(
        run_id, "volume_modulo", order.client_order_id, "ES", Side.SELL, 5, 1646.5, 0.0, ts
    )
    position = PositionRecord(run_id, "ES", "volume_modulo", -5, 1646.5, 1640.0, 0.0, 0.0, ts)
    ledger.write(Batch(new_orders=[order], fills=[fill], positions=[position]), run_id)
    try:
        (done,) = [r for r in recover(ledger, SimulatedBroker(), "simulated") if r.run_id == run_id]
        assert (done.closed, done.fills, done.left) == ({"ES": 5}, 1, {})
        assert ledger.run(run_id).status == "crashed"
        assert [(p.qty, p.realized) for p in ledger.positions(run_id)] == [(0, 32.5)]
        assert [(o.purpose, o.side, o.qty, o.status) for o in ledger.orders(run_id)][-1] == (
            "recovery",
            "buy",
            5,
            "filled",
        )
    finally:
        ledger.close()
