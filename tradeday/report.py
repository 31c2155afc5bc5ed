"""The end-of-day report: a DuckDB file users query with SQL.

Built from the ledger (read through SQLAlchemy), written in one DuckDB transaction that
first deletes the session's previous rows, so re-running a day's report replaces it and
an interrupted write leaves the previous state. The file is opened only while writing:
DuckDB allows one writer process at a time, and users query it between sessions.
Schema: docs/reports.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from tradeday.book import Book
from tradeday.ledger import Ledger

REPORT_SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY, session_date DATE, deployment VARCHAR, flow_run_id VARCHAR,
    model VARCHAR, params JSON, symbols VARCHAR[], feed VARCHAR, broker VARCHAR, status VARCHAR,
    message VARCHAR, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, ticks BIGINT, skipped BIGINT,
    reconnects BIGINT, orders BIGINT, fills BIGINT, risk_rejections BIGINT
);
CREATE TABLE IF NOT EXISTS orders (
    session_id VARCHAR, session_date DATE, model VARCHAR, client_order_id VARCHAR, symbol VARCHAR,
    side VARCHAR, qty BIGINT, limit_price DOUBLE, submitted_at TIMESTAMPTZ, status VARCHAR,
    filled_qty BIGINT, avg_fill_price DOUBLE, reason VARCHAR, purpose VARCHAR
);
CREATE TABLE IF NOT EXISTS fills (
    session_id VARCHAR, session_date DATE, model VARCHAR, client_order_id VARCHAR, symbol VARCHAR,
    side VARCHAR, qty BIGINT, price DOUBLE, fee DOUBLE, filled_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS risk_events (
    session_id VARCHAR, session_date DATE, model VARCHAR, event_at TIMESTAMPTZ, symbol VARCHAR,
    side VARCHAR, qty BIGINT, reason VARCHAR
);
CREATE TABLE IF NOT EXISTS pnl (
    session_id VARCHAR, session_date DATE, model VARCHAR, symbol VARCHAR, realized DOUBLE,
    unrealized DOUBLE, fees DOUBLE, net DOUBLE, trades BIGINT, turnover DOUBLE, win_rate DOUBLE,
    end_position BIGINT
);
"""
TABLES = ("sessions", "orders", "fills", "risk_events", "pnl")


def _ts(ns: pd.Series) -> pd.Series:
    return pd.to_datetime(ns, unit="ns", utc=True)


def build_frames(ledger: Ledger, run_id: str) -> dict[str, pd.DataFrame]:
    """The report's rows for one session, from the ledger."""
    run = ledger.run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in the ledger {ledger.url}")
    day = pd.Timestamp(run.session_date).date()
    counters = run.counters or {}
    sessions = pd.DataFrame(
        [
            {
                "session_id": run.run_id,
                "session_date": day,
                "deployment": run.deployment,
                "flow_run_id": run.flow_run_id,
                "model": run.model,
                "params": _json(run.params),
                "symbols": list(run.symbols),
                "feed": run.feed,
                "broker": run.broker,
                "status": run.status,
                "message": run.message,
                "started_at": pd.Timestamp(run.started_ns, unit="ns", tz="UTC"),
                "ended_at": pd.Timestamp(run.ended_ns, unit="ns", tz="UTC")
                if run.ended_ns
                else pd.NaT,
                "ticks": counters.get("ticks", 0),
                "skipped": counters.get("skipped", 0),
                "reconnects": counters.get("reconnects", 0),
                "orders": counters.get("orders", 0),
                "fills": counters.get("fills", 0),
                "risk_rejections": counters.get("risk_rejections", 0),
            }
        ]
    )
    orders = pd.DataFrame(
        [
            {
                "session_id": o.run_id,
                "session_date": day,
                "model": o.model,
                "client_order_id": o.client_order_id,
                "symbol": o.symbol,
                "side": o.side,
                "qty": o.qty,
                "limit_price": o.limit_price,
                "submitted_at": o.ts,
                "status": o.status,
                "filled_qty": o.filled_qty,
                "avg_fill_price": o.avg_fill_price,
                "reason": o.reason,
                "purpose": o.purpose,
            }
            for o in ledger.orders(run_id)
        ],
        columns=[
            "session_id",
            "session_date",
            "model",
            "client_order_id",
            "symbol",
            "side",
            "qty",
            "limit_price",
            "submitted_at",
            "status",
            "filled_qty",
            "avg_fill_price",
            "reason",
            "purpose",
        ],
    )
    orders["submitted_at"] = _ts(orders["submitted_at"])
    fill_rows = ledger.fills(run_id)
    fills = pd.DataFrame(
        [
            {
                "session_id": f.run_id,
                "session_date": day,
                "model": f.model,
                "client_order_id": f.client_order_id,
                "symbol": f.symbol,
                "side": f.side,
                "qty": f.qty,
                "price": f.price,
                "fee": f.fee,
                "filled_at": f.ts,
            }
            for f in fill_rows
        ],
        columns=[
            "session_id",
            "session_date",
            "model",
            "client_order_id",
            "symbol",
            "side",
            "qty",
            "price",
            "fee",
            "filled_at",
        ],
    )
    fills["filled_at"] = _ts(fills["filled_at"])
    risk = pd.DataFrame(
        [
            {
                "session_id": r.run_id,
                "session_date": day,
                "model": r.model,
                "event_at": r.ts,
                "symbol": r.symbol,
                "side": r.side,
                "qty": r.qty,
                "reason": r.reason,
            }
            for r in ledger.risk_events(run_id)
        ],
        columns=[
            "session_id",
            "session_date",
            "model",
            "event_at",
            "symbol",
            "side",
            "qty",
            "reason",
        ],
    )
    risk["event_at"] = _ts(risk["event_at"])
    book = Book()
    for f in fill_rows:
        book.apply_fill(f.symbol, f.qty if f.side == "buy" else -f.qty, f.price, f.fee)
    marks = {p.symbol: p.mark for p in ledger.positions(run_id)}
    pnl = pd.DataFrame(
        [
            {
                "session_id": run_id,
                "session_date": day,
                "model": run.model,
                "symbol": symbol,
                "realized": p.realized,
                "unrealized": p.unrealized(marks.get(symbol, p.avg_price)),
                "fees": p.fees,
                "net": p.realized + p.unrealized(marks.get(symbol, p.avg_price)) - p.fees,
                "trades": p.trades,
                "turnover": p.turnover,
                "win_rate": (p.wins / p.closes) if p.closes else None,
                "end_position": p.qty,
            }
            for symbol, p in sorted(book.positions.items())
        ],
        columns=[
            "session_id",
            "session_date",
            "model",
            "symbol",
            "realized",
            "unrealized",
            "fees",
            "net",
            "trades",
            "turnover",
            "win_rate",
            "end_position",
        ],
    )
    return {"sessions": sessions, "orders": orders, "fills": fills, "risk_events": risk, "pnl": pnl}


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def write_report(ledger: Ledger, run_id: str, path: str | Path) -> Path:
    """Write (or replace) one session's rows in the DuckDB report, atomically."""
    frames = build_frames(ledger, run_id)
    run = frames["sessions"].iloc[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(DDL)
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(REPORT_SCHEMA_VERSION)]
        )
        # the same day, model and deployment again replaces the earlier session's rows
        old = [
            r[0]
            for r in con.execute(
                "SELECT session_id FROM sessions WHERE session_date = ? AND model = ? "
                "AND deployment = ? OR session_id = ?",
                [run["session_date"], run["model"], run["deployment"], run["session_id"]],
            ).fetchall()
        ]
        for table in TABLES:
            if old:
                con.execute(f"DELETE FROM {table} WHERE session_id IN (SELECT unnest(?))", [old])
            frame = frames[table]
            if len(frame):
                con.register("frame", frame)
                cols = ", ".join(frame.columns)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM frame")
                con.unregister("frame")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return path
