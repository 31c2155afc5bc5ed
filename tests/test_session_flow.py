"""The walking skeleton, end to end: a real Prefect flow run, a real websocket between
cpquant's client and the replay server, the simulated broker, SQLite and DuckDB."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest

from flows.session import trading_session
from tradeday import recording
from tradeday.config import parse_session_config
from tradeday.ledger import Ledger

DAY = date(2013, 9, 3)
pytestmark = pytest.mark.usefixtures("prefect_harness")


def _config(open_fixture, session_paths, **model):
    return parse_session_config(
        {
            "model": {"name": "volume_modulo", **model},
            "symbols": ["ES"],
            "feed": {"recording": str(open_fixture)},
            **session_paths,
        }
    )


def test_session_orders_match_independent_count(open_fixture, session_paths):
    sizes = recording.load(open_fixture, kinds=["t"]).column("size")
    sizes = sizes.to_pylist()
    sells = sum(1 for s in sizes if s % 17 == 0)
    buys = sum(1 for s in sizes if s % 31 == 0 and s % 17 != 0)
    assert sells and buys  # the fixture exercises both branches

    result = trading_session(config=_config(open_fixture, session_paths), session_date=DAY)

    assert result["status"] == "completed"
    assert result["ticks"] == len(sizes)
    assert result["final_positions"] == {}
    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(result["run_id"])
    model_orders = [o for o in orders if o.purpose == "model"]
    assert sum(1 for o in model_orders if o.side == "sell") == sells
    assert sum(1 for o in model_orders if o.side == "buy") == buys
    assert all(o.qty == 5 and o.status == "filled" for o in model_orders)
    flatten = [o for o in orders if o.purpose == "flatten"]
    net_model = 5 * (buys - sells)
    assert len(flatten) == (1 if net_model else 0)
    assert sum(q.qty if q.side == "buy" else -q.qty for q in flatten) == -net_model
    fills = ledger.fills(result["run_id"])
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    run = ledger.run(result["run_id"])
    assert run.status == "completed"
    ledger.close()

    con = duckdb.connect(session_paths["report_path"], read_only=True)
    assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == len(orders)
    assert con.execute("SELECT count(*) FROM fills").fetchone()[0] == len(fills)
    assert (
        con.execute(
            "SELECT sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) FROM fills"
        ).fetchone()[0]
        == 0
    )
    cash = con.execute(
        "SELECT sum(CASE side WHEN 'sell' THEN qty * price ELSE -qty * price END) - sum(fee) FROM fills"
    ).fetchone()[0]
    net = con.execute("SELECT sum(net) FROM pnl").fetchone()[0]
    assert net == pytest.approx(cash, abs=1e-6)
    assert net == pytest.approx(result["net"], abs=1e-6)
    assert con.execute("SELECT status, ticks FROM sessions").fetchall() == [
        ("completed", len(sizes))
    ]
    con.close()


def test_same_day_again_keeps_both_runs_and_daily_summary_reads_the_latest(
    open_fixture, session_paths
):
    config = _config(open_fixture, session_paths)
    first = trading_session(config=config, session_date=DAY)
    second = trading_session(config=config, session_date=DAY)
    con = duckdb.connect(session_paths["report_path"], read_only=True)
    assert con.execute("SELECT session_id FROM sessions ORDER BY started_at").fetchall() == [
        (first["run_id"],),
        (second["run_id"],),
    ]
    assert con.execute(
        "SELECT session_id, count(*) FROM orders GROUP BY ALL ORDER BY ALL"
    ).fetchall() == sorted(
        [(first["run_id"], first["orders"]), (second["run_id"], second["orders"])]
    )
    assert con.execute("SELECT session_id FROM daily_summary").fetchall() == [(second["run_id"],)]
    assert first["orders"] == second["orders"]
    con.close()


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (date(2026, 11, 26), "Thanksgiving"),
        (date(2013, 9, 2), "Labor Day"),
        (date(2026, 11, 21), "Saturday"),
    ],
)
def test_closed_day_completes_with_reason_and_trades_nothing(
    open_fixture, session_paths, day, reason
):
    state = trading_session(
        config=_config(open_fixture, session_paths), session_date=day, return_state=True
    )
    assert state.is_completed()
    assert state.message == f"market closed {day.isoformat()} ({reason})"
    ledger = Ledger(session_paths["ledger_url"])
    assert ledger.runs() == []
    ledger.close()
