"""The end-of-day report: a DuckDB file users query with SQL.

Built from the ledger (read through SQLAlchemy). A run's rows are first staged in their
own small DuckDB file next to the report, then merged into it in one transaction that
migrates the file if it is older and replaces that run's earlier rows: every run is kept,
rewriting one is idempotent, and a write that fails or is killed midway leaves the
previous state. DuckDB allows one writer process or many readers, so the merge waits a
while for a reader to let go; if the file stays held, the staged rows wait for the next
writer (``tradeday.report_delivery`` starts one in the background). Schema, definitions
and ready-to-run SQL: docs/reports.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sysconfig
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from time import monotonic, sleep, time_ns

import duckdb
import numpy as np
import pandas as pd
from sqlalchemy import Connection, select

from tradeday.book import Position
from tradeday.events import MINUTE_NS
from tradeday.ledger import (
    CarriedRow,
    FillRow,
    Ledger,
    MarkRow,
    OrderRow,
    PositionRow,
    RiskEventRow,
    RunRow,
)

MONEY_DECIMALS = 6
REPORT_SCHEMA_VERSION = 6
# The newest DuckDB shell on PyPI (duckdb-cli 1.5.6, installed as .venv/bin/duckdb) reads
# storage up to v1.5.0; the duckdb 2.0 library writes v2.0.0 unless told otherwise.
SHELL_STORAGE_VERSION = "v1.5.0"
# Sharpe of 1-minute P&L changes, annualised over 252 sessions of 390 minutes.
ANNUALIZATION = math.sqrt(252 * 390)
LOCK_WAIT_S = 60.0  # how long to wait for another process to release the file
LOCK_RETRY_S = 0.2

# Sweeps (version 4): one row per sweep, one per combination and day (tradeday.sweep_report);
# version 6 added sweeps.path (backtest or faithful; NULL for a sweep made before it).
SWEEP_DDL = """
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id VARCHAR PRIMARY KEY, created_at TIMESTAMPTZ, status VARCHAR, models VARCHAR[],
    symbols VARCHAR[], days DATE[], closed_days JSON, combinations BIGINT, done BIGINT,
    path VARCHAR
);
CREATE TABLE IF NOT EXISTS sweep_results (
    sweep_id VARCHAR, model VARCHAR, params_hash VARCHAR, params JSON, session_date DATE,
    orders BIGINT, fills BIGINT, trades BIGINT, realized DOUBLE, fees DOUBLE, net DOUBLE,
    end_position BIGINT, stop_reason VARCHAR
);
"""

# Positions held overnight (version 5), one row per carried position: written by the run
# that carried it and again by the run that took it up; the newer row wins.
CARRIED_DDL = """
CREATE TABLE IF NOT EXISTS carried (
    carry_id VARCHAR, session_id VARCHAR, session_date DATE, model VARCHAR, account VARCHAR,
    symbol VARCHAR, qty BIGINT, cost DOUBLE, close_mark DOUBLE, carried_at TIMESTAMPTZ,
    status VARCHAR, taken_by VARCHAR, next_date DATE, open_price DOUBLE, overnight_pnl DOUBLE,
    message VARCHAR, updated_at TIMESTAMPTZ
);
"""

# The tables of schema version 6 (version 4's, orders.tif and carried (v5), sweeps.path (v6)). New columns go at the end of a table, so a migrated file and
# a new one have the same columns in the same order.
DDL = (
    """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY, session_date DATE, deployment VARCHAR, flow_run_id VARCHAR,
    model VARCHAR, params JSON, symbols VARCHAR[], feed VARCHAR, broker VARCHAR, status VARCHAR,
    message VARCHAR, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, ticks BIGINT, skipped BIGINT,
    reconnects BIGINT, orders BIGINT, fills BIGINT, risk_rejections BIGINT,
    max_drawdown DOUBLE, sharpe DOUBLE
);
CREATE TABLE IF NOT EXISTS orders (
    session_id VARCHAR, session_date DATE, model VARCHAR, client_order_id VARCHAR, symbol VARCHAR,
    side VARCHAR, qty BIGINT, limit_price DOUBLE, submitted_at TIMESTAMPTZ, status VARCHAR,
    filled_qty BIGINT, avg_fill_price DOUBLE, reason VARCHAR, purpose VARCHAR, tif VARCHAR
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
    end_position BIGINT, wins BIGINT, closes BIGINT
);
CREATE TABLE IF NOT EXISTS positions_eod (
    session_id VARCHAR, session_date DATE, model VARCHAR, symbol VARCHAR, qty BIGINT,
    avg_price DOUBLE, mark DOUBLE, market_value DOUBLE, realized DOUBLE, unrealized DOUBLE,
    fees DOUBLE, as_of TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS equity (
    session_id VARCHAR, session_date DATE, model VARCHAR, symbol VARCHAR, minute TIMESTAMPTZ,
    position BIGINT, mark DOUBLE, realized DOUBLE, unrealized DOUBLE, fees DOUBLE, equity DOUBLE
);
"""
    + SWEEP_DDL
    + CARRIED_DDL
)

# Statements that bring a file from the previous version to this key's version.
MIGRATIONS: dict[int, str] = {
    2: """
ALTER TABLE sessions ADD COLUMN max_drawdown DOUBLE;
ALTER TABLE sessions ADD COLUMN sharpe DOUBLE;
ALTER TABLE pnl ADD COLUMN wins BIGINT;
ALTER TABLE pnl ADD COLUMN closes BIGINT;
""",
    # 3 keeps every run (no rerun replaces another) and changes only the views
    4: SWEEP_DDL,
    5: "ALTER TABLE orders ADD COLUMN tif VARCHAR;" + CARRIED_DDL,
    # a file older than v4 already gets sweeps.path from step 4 (SWEEP_DDL is v6's)
    6: "ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS path VARCHAR;",
}

# Recreated by every write, so a changed view reaches a file with its next write. Sums of
# money are rounded to MONEY_DECIMALS like the stored rows, so no float noise shows.
VIEWS = f"""
CREATE OR REPLACE VIEW session_equity AS
SELECT session_id, session_date, model, minute,
       sum(position * mark) AS market_value, sum(realized) AS realized,
       sum(unrealized) AS unrealized, sum(fees) AS fees, sum(equity) AS equity
FROM equity
GROUP BY session_id, session_date, model, minute;

CREATE OR REPLACE VIEW run_summary AS
WITH runs AS (
    SELECT s.session_date, s.model, s.deployment, s.session_id, s.status, s.symbols,
           s.ticks, s.orders, s.fills, s.risk_rejections,
           coalesce(sum(p.trades), 0)::BIGINT AS trades,
           round(coalesce(sum(p.turnover), 0), {MONEY_DECIMALS}) AS turnover,
           round(coalesce(sum(p.realized), 0), {MONEY_DECIMALS}) AS realized,
           round(coalesce(sum(p.unrealized), 0), {MONEY_DECIMALS}) AS unrealized,
           round(coalesce(sum(p.fees), 0), {MONEY_DECIMALS}) AS fees,
           round(coalesce(sum(p.net), 0), {MONEY_DECIMALS}) AS net,
           sum(p.wins) / nullif(sum(p.closes), 0) AS win_rate,
           round(s.max_drawdown, {MONEY_DECIMALS}) AS max_drawdown, s.sharpe, s.started_at
    FROM sessions s LEFT JOIN pnl p USING (session_id)
    GROUP BY ALL)
SELECT *,
       row_number() OVER (PARTITION BY session_date, model, deployment
                          ORDER BY started_at DESC, session_id DESC) = 1 AS latest
FROM runs
ORDER BY session_date, model, deployment, started_at, session_id;

CREATE OR REPLACE VIEW latest_sessions AS
SELECT * FROM sessions
WHERE session_id IN (SELECT session_id FROM run_summary WHERE latest);

CREATE OR REPLACE VIEW daily_summary AS
SELECT * EXCLUDE (started_at, latest) FROM run_summary WHERE latest
ORDER BY session_date, model, deployment;

CREATE OR REPLACE VIEW overnight_pnl AS
SELECT session_date, next_date, model, symbol, qty, close_mark, open_price, overnight_pnl,
       session_id, taken_by
FROM carried WHERE status = 'taken'
ORDER BY model, symbol, session_date;

CREATE OR REPLACE VIEW multi_day_summary AS
WITH days AS (
    SELECT *, row_number() OVER (PARTITION BY model, deployment
                                 ORDER BY session_date DESC) = 1 AS last_day
    FROM daily_summary),
nights AS (
    SELECT model, count(*) AS nights, sum(overnight_pnl) AS overnight_pnl
    FROM overnight_pnl WHERE open_price IS NOT NULL GROUP BY model)
SELECT d.model, d.deployment, min(d.session_date) AS first_date,
       max(d.session_date) AS last_date, count(*) AS sessions,
       sum(d.orders)::BIGINT AS orders, sum(d.trades)::BIGINT AS trades,
       round(sum(d.realized), {MONEY_DECIMALS}) AS realized,
       round(sum(d.fees), {MONEY_DECIMALS}) AS fees,
       round(sum(d.unrealized) FILTER (WHERE d.last_day), {MONEY_DECIMALS}) AS open_unrealized,
       round(sum(d.realized) - sum(d.fees)
             + sum(d.unrealized) FILTER (WHERE d.last_day), {MONEY_DECIMALS}) AS net,
       coalesce(any_value(n.nights), 0)::BIGINT AS nights,
       round(coalesce(any_value(n.overnight_pnl), 0), {MONEY_DECIMALS}) AS overnight_pnl
FROM days d LEFT JOIN nights n USING (model)
GROUP BY d.model, d.deployment
ORDER BY d.model, d.deployment;
"""

# Every table holding a session's rows, in the order they are written.
TABLES = ("sessions", "orders", "fills", "risk_events", "pnl", "positions_eod", "equity")


class ReportError(RuntimeError):
    """The report file cannot be used (missing, or written by a newer tradeday)."""


# -- P&L ------------------------------------------------------------------------------------


@dataclass
class Curve:
    """One symbol's state at the end of every minute, and its final position."""

    rows: list[tuple]  # (symbol, minute_ns, position, mark, realized, unrealized, fees, equity)
    final: Position
    last_mark: float | None


def replay_fills(
    symbol: str,
    fills: list[tuple[int, int, float, float]],
    marks: dict[int, float],
    grid: np.ndarray,
    opening: tuple[int, float] | None = None,
) -> Curve:
    """Apply ``fills`` (minute_ns, signed qty, price, fee; in fill order) minute by minute,
    from the ``opening`` position (quantity, cost) carried in from an earlier session.

    The mark of a minute is the ledger's mark for it, else the last fill price in it, else
    the previous minute's: a ledger without marks (written before they existed) still
    gets a curve marked at its fills.
    """
    last_fill: dict[int, float] = {f[0]: f[2] for f in fills}
    pos = Position()
    if opening is not None:
        pos.qty, pos.avg_price = opening
    mark: float | None = None
    rows: list[tuple] = []
    i = 0
    for minute in grid.tolist():
        while i < len(fills) and fills[i][0] <= minute:
            _, qty, price, fee = fills[i]
            pos.apply(qty, price, fee)
            i += 1
        mark = marks.get(minute, last_fill.get(minute, mark))
        unrealized = pos.unrealized(mark) if mark is not None else 0.0
        equity = pos.realized + unrealized - pos.fees
        rows.append((symbol, minute, pos.qty, mark, pos.realized, unrealized, pos.fees, equity))
    return Curve(rows, pos, mark)


def drawdown_and_sharpe(equity: Iterable[float]) -> tuple[float | None, float | None]:
    """Max drawdown and annualised Sharpe of a session's per-minute equity (net P&L).

    The curve starts at 0 before the first minute. Drawdown is the largest fall from the
    running peak (currency, >= 0). Sharpe is mean / sample std of the 1-minute changes
    times sqrt(252 * 390): the Sharpe of 1-minute returns on any fixed capital, which
    cancels out; None when there are fewer than two changes or they never vary.
    """
    curve = np.concatenate(([0.0], np.asarray(list(equity), dtype=float)))
    if len(curve) == 1:
        return None, None
    drawdown = float(np.max(np.maximum.accumulate(curve) - curve))
    changes = np.diff(curve)
    std = float(changes.std(ddof=1)) if len(changes) > 1 else 0.0
    sharpe = float(changes.mean()) / std * ANNUALIZATION if std > 0 else None
    return drawdown, sharpe


# -- reading the ledger ---------------------------------------------------------------------


def _query(conn: Connection, stmt) -> pd.DataFrame:
    """A query's rows as a frame; plain tuples keep pandas on its fast path for 10^5 rows."""
    result = conn.execute(stmt)
    return pd.DataFrame.from_records([tuple(r) for r in result], columns=list(result.keys()))


def _ts(ns: pd.Series) -> pd.Series:
    return pd.to_datetime(ns.astype("int64"), unit="ns", utc=True)


def build_frames(ledger: Ledger, run_id: str) -> dict[str, pd.DataFrame]:
    """The report's rows for one session, read from the ledger in one transaction."""
    with ledger.engine.connect() as conn, conn.begin():
        run = conn.execute(select(RunRow.__table__).where(RunRow.run_id == run_id)).first()
        if run is None:
            raise KeyError(f"no run {run_id!r} in the ledger {ledger.url}")
        o, f = OrderRow, FillRow
        orders = _query(
            conn,
            select(
                o.client_order_id,
                o.symbol,
                o.side,
                o.qty,
                o.limit_price,
                o.ts,
                o.status,
                o.filled_qty,
                o.avg_fill_price,
                o.reason,
                o.purpose,
                o.tif,
            )
            .where(o.run_id == run_id)
            .order_by(o.ts, o.client_order_id),
        )
        fills = _query(
            conn,
            select(f.client_order_id, f.symbol, f.side, f.qty, f.price, f.fee, f.ts)
            .where(f.run_id == run_id)
            .order_by(f.id),
        )
        risk = _query(
            conn,
            select(RiskEventRow.__table__)
            .where(RiskEventRow.run_id == run_id)
            .order_by(RiskEventRow.id),
        )
        positions = _query(conn, select(PositionRow.__table__).where(PositionRow.run_id == run_id))
        marks = _query(conn, select(MarkRow.__table__).where(MarkRow.run_id == run_id))
        c, taker = CarriedRow, RunRow.__table__.alias("taker")
        carried = _query(
            conn,
            select(c.__table__, taker.c.session_date.label("next_date"))
            .outerjoin(taker, taker.c.run_id == c.taken_run_id)
            .where((c.from_run_id == run_id) | (c.taken_run_id == run_id))
            .order_by(c.carry_id),
        )

    day = date.fromisoformat(run.session_date)
    keys = {"session_id": run.run_id, "session_date": day, "model": run.model}

    def keyed(frame: pd.DataFrame, columns: list[str], **renames: str) -> pd.DataFrame:
        frame = frame.rename(columns=renames)
        for name, value in keys.items():
            frame[name] = value
        return frame[list(keys) + columns]

    orders = keyed(
        orders,
        [
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
            "tif",
        ],
        ts="submitted_at",
    )
    orders["submitted_at"] = _ts(orders["submitted_at"])
    risk = keyed(risk, ["event_at", "symbol", "side", "qty", "reason"], ts="event_at")
    risk["event_at"] = _ts(risk["event_at"])

    carried_in = carried[carried["taken_run_id"] == run_id]
    pnl, equity, eod = _pnl_equity_positions(fills, marks, positions, carried_in)
    fills = keyed(
        fills,
        ["client_order_id", "symbol", "side", "qty", "price", "fee", "filled_at"],
        ts="filled_at",
    )
    fills["filled_at"] = _ts(fills["filled_at"])
    pnl = keyed(pnl, list(pnl.columns))
    equity = keyed(equity, list(equity.columns))
    eod = keyed(eod, list(eod.columns))

    drawdown, sharpe = drawdown_and_sharpe(equity.groupby("minute", sort=True)["equity"].sum())
    counters = run.counters or {}
    sessions = pd.DataFrame(
        [
            {
                "session_id": run.run_id,
                "session_date": day,
                "deployment": run.deployment,
                "flow_run_id": run.flow_run_id,
                "model": run.model,
                "params": json.dumps(run.params, sort_keys=True),
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
                # counted from the rows, not the run's counters: a crashed run's last
                # counters predate its recovery orders
                "orders": len(orders),
                "fills": len(fills),
                "risk_rejections": counters.get("risk_rejections", 0),
                "max_drawdown": drawdown,
                "sharpe": sharpe,
            }
        ]
    )
    return {
        "sessions": sessions,
        "orders": orders,
        "fills": fills,
        "risk_events": risk,
        "pnl": pnl,
        "positions_eod": eod,
        "equity": equity,
        "carried": _carried_frame(carried),
    }


def _carried_frame(carried: pd.DataFrame) -> pd.DataFrame:
    """The report's ``carried`` rows: the night's P&L is ``qty * (open_price - close_mark)``."""
    frame = pd.DataFrame(
        {
            "carry_id": carried["carry_id"],
            "session_id": carried["from_run_id"],
            "session_date": pd.to_datetime(carried["session_date"]).dt.date,
            "model": carried["model"],
            "account": carried["account"],
            "symbol": carried["symbol"],
            "qty": carried["qty"],
            "cost": carried["cost"],
            "close_mark": carried["mark"],
            "carried_at": _ts(carried["carried_ns"]),
            "status": carried["status"],
            "taken_by": carried["taken_run_id"],
            "next_date": pd.to_datetime(carried["next_date"]).dt.date,
            "open_price": carried["open_price"],
            "overnight_pnl": (carried["qty"] * (carried["open_price"] - carried["mark"])).round(
                MONEY_DECIMALS
            ),
            "message": carried["message"],
            "updated_at": pd.Timestamp(time_ns(), unit="ns", tz="UTC"),
        }
    )
    return frame


def _pnl_equity_positions(
    fills: pd.DataFrame,
    marks: pd.DataFrame,
    positions: pd.DataFrame,
    carried_in: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-symbol P&L, the per-minute equity curve and end-of-day positions, from the fills.

    P&L and the curve replay the fills through :class:`Position` (average cost), so they
    agree with the engine's book, starting from what the session took up from an earlier
    one (``carried_in``: at its cost, not a trade); open positions are valued at the
    ledger's end-of-day mark (the session's last price).
    """
    opening = {
        symbol: (int(qty), float(cost))
        for symbol, qty, cost in zip(
            carried_in["symbol"], carried_in["qty"], carried_in["cost"], strict=True
        )
    }
    eod_marks = dict(zip(positions["symbol"], positions["mark"], strict=True))
    fill_minutes = (fills["ts"] - fills["ts"] % MINUTE_NS).astype("int64")
    signed = fills["qty"].where(fills["side"] == "buy", -fills["qty"]).astype("int64")
    minutes = np.union1d(fill_minutes.to_numpy(), marks["ts"].to_numpy(dtype="int64"))
    grid = (
        np.arange(minutes[0], minutes[-1] + MINUTE_NS, MINUTE_NS, dtype="int64")
        if len(minutes)
        else minutes
    )
    by_symbol: dict[str, list[tuple[int, int, float, float]]] = {}
    for symbol, *fill in zip(
        fills["symbol"].tolist(),
        fill_minutes.tolist(),
        signed.tolist(),
        fills["price"].tolist(),
        fills["fee"].tolist(),
        strict=True,
    ):
        by_symbol.setdefault(symbol, []).append(tuple(fill))
    marks_by_symbol: dict[str, dict[int, float]] = {}
    for symbol, ts, price in zip(
        marks["symbol"].tolist(), marks["ts"].tolist(), marks["price"].tolist(), strict=True
    ):
        marks_by_symbol.setdefault(symbol, {})[ts] = price

    pnl_rows, equity_rows = [], []
    for symbol in sorted(set(by_symbol) | set(marks_by_symbol) | set(opening)):
        curve = replay_fills(
            symbol,
            by_symbol.get(symbol, []),
            marks_by_symbol.get(symbol, {}),
            grid,
            opening.get(symbol),
        )
        equity_rows.extend(curve.rows)
        if symbol not in by_symbol and symbol not in opening:
            continue
        p = curve.final
        mark = eod_marks.get(symbol, curve.last_mark)
        unrealized = p.unrealized(mark if mark is not None else p.avg_price)
        pnl_rows.append(
            {
                "symbol": symbol,
                # 6 decimals: below any price tick, above float noise (1e-9 after thousands of fills)
                "realized": round(p.realized, MONEY_DECIMALS),
                "unrealized": round(unrealized, MONEY_DECIMALS),
                "fees": round(p.fees, MONEY_DECIMALS),
                "net": round(p.realized + unrealized - p.fees, MONEY_DECIMALS),
                "trades": p.trades,
                "turnover": round(p.turnover, MONEY_DECIMALS),
                "win_rate": p.wins / p.closes if p.closes else None,
                "end_position": p.qty,
                "wins": p.wins,
                "closes": p.closes,
            }
        )
    pnl = pd.DataFrame(
        pnl_rows,
        columns=[
            "symbol",
            "realized",
            "unrealized",
            "fees",
            "net",
            "trades",
            "turnover",
            "win_rate",
            "end_position",
            "wins",
            "closes",
        ],
    )
    equity = pd.DataFrame(
        equity_rows,
        columns=[
            "symbol",
            "minute",
            "position",
            "mark",
            "realized",
            "unrealized",
            "fees",
            "equity",
        ],
    )
    equity["minute"] = _ts(equity["minute"])
    eod = positions.sort_values("symbol").rename(columns={"ts": "as_of"})
    eod["market_value"] = eod["qty"] * eod["mark"]
    eod["unrealized"] = (eod["mark"] - eod["avg_price"]) * eod["qty"]
    eod["as_of"] = _ts(eod["as_of"])
    eod = eod[
        [
            "symbol",
            "qty",
            "avg_price",
            "mark",
            "market_value",
            "realized",
            "unrealized",
            "fees",
            "as_of",
        ]
    ]
    return pnl, equity, eod


# -- the DuckDB file ------------------------------------------------------------------------


class ReportLocked(ReportError):
    """Another process holds the report file; ``holder`` is DuckDB's word for who."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


def lock_holder(exc: duckdb.Error) -> str | None:
    """Who holds the file, from DuckDB's lock error ("PID 8307 (/usr/bin/duckdb)"); None if
    the error is not about the lock."""
    text = str(exc)
    if "Could not set lock on file" not in text:
        return None
    found = re.search(r"Conflicting lock is held in (.+?) \(PID (\d+)\)", text)
    return f"PID {found[2]} ({found[1]})" if found else "another process"


def connect(
    path: str | Path, *, read_only: bool, wait_s: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the report, waiting up to ``wait_s`` while another process holds it.

    DuckDB lets one process open a file for writing, or any number for reading, never
    both. A file tradeday creates is in ``SHELL_STORAGE_VERSION``, which the DuckDB shell
    reads; an existing file keeps its storage version (``shell_readable`` upgrades it).
    """
    config = {} if read_only else {"storage_compatibility_version": SHELL_STORAGE_VERSION}
    deadline = monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            holder = lock_holder(exc)
            if holder is None:
                raise
            if monotonic() >= deadline:
                raise ReportLocked(Path(path), holder) from exc
            sleep(LOCK_RETRY_S)


def storage_version(con: duckdb.DuckDBPyConnection) -> str:
    """The file's storage format, as DuckDB tags it ("v1.5.0+", "v2.0.0+")."""
    row = con.execute(
        "SELECT tags['storage_version'] FROM duckdb_databases() "
        "WHERE database_name = current_database()"
    ).fetchone()
    return row[0] if row and row[0] else ""


def shell_readable(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyConnection:
    """The writer's connection to a file the DuckDB shell can read, rewriting it if needed.

    Files written by tradeday before schema v3 are in the duckdb 2.0 library's storage,
    which the shell refuses: the whole database is copied into a new file in
    ``SHELL_STORAGE_VERSION`` while this connection still holds the old one, and the copy
    replaces it (rename). Returns the connection to use from then on.
    """
    if storage_version(con).removesuffix("+") == SHELL_STORAGE_VERSION:
        return con
    fresh = path.with_name(f".{path.name}.v{SHELL_STORAGE_VERSION}.tmp")
    fresh.unlink(missing_ok=True)
    con.execute(f"ATTACH '{_quoted(fresh)}' AS fresh (STORAGE_VERSION '{SHELL_STORAGE_VERSION}')")
    con.execute("COPY FROM DATABASE " + _current(con) + " TO fresh")
    con.execute("DETACH fresh")
    os.replace(fresh, path)
    con.close()
    return connect(path, read_only=False)


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _current(con: duckdb.DuckDBPyConnection) -> str:
    return '"' + con.execute("SELECT current_database()").fetchone()[0].replace('"', '""') + '"'


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The file's schema version; None for a file with no report in it yet."""
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_name = 'meta' AND table_catalog = current_database()"
    ).fetchone()
    if not has_meta or not has_meta[0]:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schema, or upgrade an older file to it; run inside the caller's transaction."""
    version = schema_version(con)
    if version is not None and version > REPORT_SCHEMA_VERSION:
        raise ReportError(
            f"the report was written by a newer tradeday (schema v{version}; "
            f"this one writes v{REPORT_SCHEMA_VERSION})"
        )
    if version is not None:
        for step in range(version + 1, REPORT_SCHEMA_VERSION + 1):
            if MIGRATIONS.get(step):
                con.execute(MIGRATIONS[step])
    con.execute(DDL)
    con.execute(VIEWS)
    con.execute(
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(REPORT_SCHEMA_VERSION)]
    )


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    if len(frame):
        con.register("frame", frame)
        cols = ", ".join(frame.columns)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM frame")
        con.unregister("frame")


# -- staged runs: a run's rows in their own file until the report takes them ----------------


def pending_dir(path: str | Path) -> Path:
    """Where a report's staged runs wait: ``<report>.pending/`` next to it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.pending")


def staged_runs(path: str | Path) -> dict[str, list[Path]]:
    """Staged files per run id, oldest first (the newest holds the run's latest rows)."""
    runs: dict[str, list[tuple[int, Path]]] = {}
    for file in pending_dir(path).glob("*.duckdb"):
        run_id, _, stamp = file.stem.rpartition(".")
        if run_id and stamp.isdigit():
            runs.setdefault(run_id, []).append((int(stamp), file))
    return {run_id: [f for _, f in sorted(files)] for run_id, files in sorted(runs.items())}


def stage_run(ledger: Ledger, run_id: str, path: str | Path) -> Path:
    """Compute a run's rows from the ledger into their own DuckDB file next to the report.

    The file appears whole or not at all (written under a temporary name, fsynced, then
    renamed), and no reader ever opens it: staging never waits for the report's lock.
    """
    frames = build_frames(ledger, run_id)
    folder = pending_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{run_id}.{time_ns()}.duckdb"
    tmp = staged.with_suffix(".tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.execute(DDL)
            for table in (*TABLES, "carried"):
                _insert(con, table, frames[table])
        finally:
            con.close()
        _fsync(tmp)
        os.replace(tmp, staged)
        _fsync(folder)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
    return staged


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _merge_table(con: duckdb.DuckDBPyConnection, table: str) -> None:
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM staged.{table}")


def _merge_carried(con: duckdb.DuckDBPyConnection) -> None:
    """Carried rows are written by two runs (the one that carried, the one that took up):
    the newer version of a row replaces the older, whichever run's write comes last."""
    staged = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = 'staged' AND table_name = 'carried'"
    ).fetchone()
    if not staged or not staged[0]:
        return  # staged by a tradeday before version 5
    con.execute(
        "DELETE FROM carried WHERE carry_id IN (SELECT s.carry_id FROM staged.carried s "
        "JOIN carried c USING (carry_id) WHERE s.updated_at >= c.updated_at)"
    )
    con.execute(
        "INSERT INTO carried BY NAME SELECT * FROM staged.carried "
        "WHERE carry_id NOT IN (SELECT carry_id FROM carried)"
    )


def _merge(con: duckdb.DuckDBPyConnection, staged: Path) -> None:
    """One staged run into the report in one transaction: its earlier rows out, these in."""
    con.execute(f"ATTACH '{_quoted(staged)}' AS staged (READ_ONLY)")
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            migrate(con)
            ids = [r[0] for r in con.execute("SELECT session_id FROM staged.sessions").fetchall()]
            for table in TABLES:
                con.execute(f"DELETE FROM {table} WHERE session_id IN (SELECT unnest(?))", [ids])
            for table in TABLES:
                _merge_table(con, table)
            _merge_carried(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.execute("DETACH staged")


def merge_pending(path: str | Path, wait_s: float = LOCK_WAIT_S) -> list[str]:
    """Move every staged run into the report; the run ids written.

    Raises :class:`ReportLocked` when another process still holds the file after
    ``wait_s``: the staged files stay for the next writer. Staged files are listed only
    once the report's write lock is held, so two writers never merge the same one, and
    each is deleted only after its transaction committed.
    """
    path = Path(path)
    if not staged_runs(path):
        return []
    con = connect(path, read_only=False, wait_s=wait_s)
    try:
        con = shell_readable(con, path)
        written = []
        for run_id, files in staged_runs(path).items():
            _merge(con, files[-1])
            for file in files:
                file.unlink()
            written.append(run_id)
    finally:
        con.close()
    return written


def write_report(
    ledger: Ledger, run_id: str, path: str | Path, wait_s: float = LOCK_WAIT_S
) -> Path:
    """Write (or rewrite) one run's rows in the DuckDB report; every other run is kept.

    The rows are staged first, then merged with any other staged run. If another
    process holds the file for longer than ``wait_s`` this raises :class:`ReportLocked`
    and the rows stay staged: the next write, or ``tradeday.report_delivery``'s
    background writer, puts them in.
    """
    path = Path(path)
    stage_run(ledger, run_id, path)
    merge_pending(path, wait_s)
    return path


def open_report(path: str | Path, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a report, with staged runs merged in first when the file is
    free, and migrated first if an older tradeday wrote it."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"no report at {path}: run a session first")
    with suppress(ReportLocked):  # a reader or writer has it: the rows land with the next write
        merge_pending(path, wait_s=0)
    con = connect(path, read_only=True, wait_s=wait_s)
    if schema_version(con) != REPORT_SCHEMA_VERSION:
        con.close()
        con = shell_readable(connect(path, read_only=False, wait_s=wait_s), path)
        try:
            con.execute("BEGIN TRANSACTION")
            migrate(con)
            con.execute("COMMIT")
        finally:
            con.close()
        con = connect(path, read_only=True, wait_s=wait_s)
    return con


# -- summaries ------------------------------------------------------------------------------


def session_summary(
    con: duckdb.DuckDBPyConnection,
    dates: Iterable[date | str] | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """Every run on the given dates, or on the last ``last`` session dates (``run_summary``).

    Its ``latest`` column marks the latest run of each date, model and deployment: what
    ``daily_summary`` keeps and what :func:`model_totals` adds up.
    """
    if dates is not None:
        wanted = sorted({date.fromisoformat(str(d)) for d in dates})
    else:
        wanted = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT session_date FROM sessions ORDER BY session_date DESC LIMIT ?",
                [last or 1],
            ).fetchall()
        ]
    return con.execute(
        "SELECT * FROM run_summary WHERE session_date IN (SELECT unnest(?::DATE[]))",
        [wanted],
    ).df()


def model_totals(summary: pd.DataFrame) -> pd.DataFrame:
    """Net P&L per model over the latest run of each date and deployment: the per-model
    comparison (a rerun of a day counts once, as ``daily_summary`` does)."""
    grouped = summary[summary["latest"]].groupby("model", sort=True)
    return pd.DataFrame(
        {
            "sessions": grouped.size(),
            "trades": grouped["trades"].sum(),
            "fees": grouped["fees"].sum(),
            "net": grouped["net"].sum(),
            "mean_net": grouped["net"].mean(),
            "winning_days": grouped["net"].agg(lambda s: int((s > 0).sum())),
            "worst_drawdown": grouped["max_drawdown"].max(),
        }
    ).reset_index()


def shell_command(report_path: str | Path, *, absolute: bool = False) -> str:
    """The command that opens the report read-only in the DuckDB shell of this environment.

    Paths are relative to the working directory when they are under it (what a user types
    in the repository), absolute otherwise or when ``absolute`` (an artifact has no
    working directory).
    """
    shell = Path(sysconfig.get_path("scripts")) / "duckdb"
    return f"{_shown(shell, absolute)} -readonly {_shown(Path(report_path), absolute)}"


def _shown(path: Path, absolute: bool) -> str:
    full = path.resolve()
    if absolute or not full.is_relative_to(Path.cwd()):
        return shlex.quote(str(full))
    return shlex.quote(str(full.relative_to(Path.cwd())))


def money(value: float | None) -> str:
    """To the cent with thousands separators; blank for NULL."""
    return "" if value is None or pd.isna(value) else f"{value:,.2f}"


def _ratio(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}"


def summary_markdown_for(
    report_path: str | Path, dates: Iterable[date | str], wait_s: float = LOCK_WAIT_S
) -> str:
    """Markdown tables of every run on ``dates`` and the net P&L per model.

    What the session's Prefect artifact shows, and what an end-of-day report flow can
    publish for any set of days. Raises :class:`ReportLocked` if another process holds
    the file for longer than ``wait_s``.
    """
    days = [date.fromisoformat(d) if isinstance(d, str) else d for d in dates]
    con = open_report(report_path, wait_s)
    try:
        summary = session_summary(con, dates=days)
        nights = _nights_markdown(con, days)
    finally:
        con.close()
    if summary.empty:
        return "_No sessions in the report for these dates._\n"
    lines = [
        "| Date | Model | Deployment | Status | Trades | Fees | Net P&L | Max drawdown | Sharpe "
        "| Run |",
        "|---|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.session_date:%Y-%m-%d} | {r.model} | {r.deployment or '-'} | {r.status} "
            f"| {r.trades:,} | {money(r.fees)} | {money(r.net)} | {money(r.max_drawdown)} "
            f"| {_ratio(r.sharpe)} | {r.session_id}{'' if r.latest else ' (rerun since)'} |"
        )
    lines += [
        "",
        "**Net P&L per model** (the latest run of each date and deployment)",
        "",
        "| Model | Sessions | Trades | Fees | Net P&L | Mean per session | Winning |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in model_totals(summary).itertuples():
        lines.append(
            f"| {r.model} | {r.sessions} | {r.trades:,} | {money(r.fees)} | {money(r.net)} "
            f"| {money(r.mean_net)} | {r.winning_days}/{r.sessions} |"
        )
    return "\n".join(lines) + "\n" + nights


def _nights_markdown(con: duckdb.DuckDBPyConnection, days: list[date]) -> str:
    """The positions held overnight into or out of ``days``: the nights ended, from the
    ``overnight_pnl`` view (quantity × (next open − close)), and those still ahead."""
    rows = con.execute(
        "SELECT session_date, next_date, model, symbol, qty, close_mark, open_price, "
        "overnight_pnl FROM overnight_pnl WHERE open_price IS NOT NULL "
        "AND (session_date IN (SELECT unnest(?)) OR next_date IN (SELECT unnest(?))) "
        "UNION ALL "
        "SELECT session_date, NULL, model, symbol, qty, close_mark, NULL, NULL FROM carried "
        "WHERE status = 'open' AND session_date IN (SELECT unnest(?)) "
        "ORDER BY session_date, model, symbol",
        [days, days, days],
    ).fetchall()
    if not rows:
        return ""
    lines = [
        "",
        "**Held overnight** (P&L = quantity × (next open − close))",
        "",
        "| Night | Model | Symbol | Shares | Close | Next open | Overnight P&L |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for day, nxt, model, symbol, qty, close, open_price, pnl in rows:
        night = f"{day:%Y-%m-%d} → {nxt:%Y-%m-%d}" if nxt else f"{day:%Y-%m-%d} → next open"
        lines.append(
            f"| {night} | {model} | {symbol} | {qty:,} | {money(close)} "
            f"| {'-' if open_price is None else money(open_price)} "
            f"| {'held' if pnl is None else money(pnl)} |"
        )
    return "\n".join(lines) + "\n"
