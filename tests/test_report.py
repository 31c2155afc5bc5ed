"""The DuckDB report: P&L reconciled with the fills, idempotent and atomic writes, migration,
the one-writer rule, ``tradeday report``, the SQL in docs/reports.md, and its write time.

Sessions come from real replays: a Prefect flow run over 20 minutes of recorded E-mini
trades, and five recorded January-2023 days of 1-minute bars driven through the real
engine, simulated broker and risk gate, with two small bar models defined here so these
tests do not move when a shipped model is tuned.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Literal

import duckdb
import psutil
import pytest
from sqlalchemy import func, select

import tradeday.report as report
from models.base import NO_ORDERS, Model, ModelParams
from tradeday import recording
from tradeday.book import Book
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.calendar import session_window
from tradeday.cli import main as cli_main
from tradeday.config import RiskLimits
from tradeday.engine import Engine
from tradeday.events import Bar, Order, Side, Trade, buy, sell
from tradeday.ledger import FillRow, Ledger, OrderRow
from tradeday.records import Batch, FillRecord, MarkRecord, OrderRecord, OrderStatus
from tradeday.report import (
    REPORT_SCHEMA_VERSION,
    TABLES,
    open_report,
    summary_markdown_for,
    write_report,
)
from tradeday.report_delivery import check_writable, deliver_report
from tradeday.risk import RiskGate

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reports.md"
DAYS = [date(2023, 1, 3), date(2023, 1, 4), date(2023, 1, 5), date(2023, 1, 6), date(2023, 1, 9)]
SYMBOLS = ["AAPL", "MSFT"]
MINUTE_NS = 60_000_000_000
CENT = 1e-6


def approx(value: float) -> object:
    return pytest.approx(value, abs=CENT)


# -- bar sessions through the real engine ---------------------------------------------------


class BarTrendParams(ModelParams):
    name: Literal["bar_trend", "bar_fade"] = "bar_trend"
    quantity: int = 10
    limit: int = 30


class BarTrend(Model[BarTrendParams]):
    """Buy a bar that closed up, sell one that closed down (``bar_fade``: the opposite)."""

    params_class = BarTrendParams

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        p = self.params
        up = bar.close > bar.open if p.name == "bar_trend" else bar.close < bar.open
        down = bar.close < bar.open if p.name == "bar_trend" else bar.close > bar.open
        if up and position < p.limit:
            return (buy(bar.symbol, p.quantity),)
        if down and position > -p.limit:
            return (sell(bar.symbol, p.quantity),)
        return NO_ORDERS


def replay_bars(
    ledger: Ledger,
    day: date,
    model: str,
    *,
    flatten: bool = True,
    run_id: str | None = None,
    started_late_ns: int = 0,
) -> str:
    """One session of recorded bars as TradingSession runs it: flushes, flatten, final flush.

    ``run_id`` and ``started_late_ns`` make a rerun of the same day and model.
    """
    window = session_window(day)
    bars = recording.load(
        recording.bundled(day), SYMBOLS, window.open_ns, window.close_ns, kinds=["b"]
    )
    params = BarTrendParams(name=model, quantity=10 if model == "bar_trend" else 7)
    run_id = run_id or f"td-{day:%Y%m%d}-{model}"
    ledger.start_run(
        run_id=run_id,
        session_date=day.isoformat(),
        model=model,
        params=params.model_dump(mode="json"),
        symbols=SYMBOLS,
        feed="replay",
        broker="simulated",
        account="simulated",
        started_ns=window.open_ns + started_late_ns,
        heartbeat_ns=window.open_ns,
        counters={},
    )
    book = Book(1_000_000.0)
    broker = SimulatedBroker(1_000_000.0, slippage_bps=1.0, commission_per_share=0.005)
    engine = Engine(
        run_id,
        BarTrend(params, SYMBOLS),
        broker,
        RiskGate(RiskLimits(), book),
        book,
        model_name=model,
    )
    for i, b in enumerate(bars.to_pylist()):
        engine.on_events(
            [Bar(b["symbol"], b["ts"], b["open"], b["high"], b["low"], b["close"], b["volume"])]
        )
        if i % 200 == 199:
            ledger.write(engine.take_batch(), run_id)
    if flatten:
        engine.flatten()
        broker.flush(engine.clock)
        engine.drain()
    ledger.write(engine.take_batch(positions=True), run_id)
    status = "completed" if not book.open_positions() else "failed"
    counters = {"ticks": bars.num_rows, "orders": engine.stats.orders, "fills": engine.stats.fills}
    ledger.finish_run(run_id, status, status, window.close_ns, counters)
    return run_id


@pytest.fixture(scope="module")
def five_days(tmp_path_factory) -> dict:
    """Ten flat sessions (two models x five recorded days) in one ledger and one report."""
    tmp = tmp_path_factory.mktemp("five_days")
    ledger = Ledger(f"sqlite:///{tmp / 'ledger.sqlite'}")
    path = tmp / "reports.duckdb"
    runs = [replay_bars(ledger, day, m) for day in DAYS for m in ("bar_trend", "bar_fade")]
    for run_id in runs:
        write_report(ledger, run_id, path)
    yield {"ledger": ledger, "path": path, "runs": runs, "tmp": tmp}
    ledger.close()


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    finally:
        con.close()


def reconcile(con: duckdb.DuckDBPyConnection, session_id: str) -> tuple[float, float, float]:
    """Sum of pnl.net, and the cash change and open value computed straight from ``fills``."""
    return con.execute(
        """
        SELECT
          (SELECT sum(net) FROM pnl WHERE session_id = $id),
          (SELECT sum(CASE side WHEN 'sell' THEN qty * price ELSE -qty * price END) - sum(fee)
             FROM fills WHERE session_id = $id),
          (SELECT coalesce(sum(f.position * e.mark), 0)
             FROM (SELECT symbol, sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) AS position
                     FROM fills WHERE session_id = $id GROUP BY symbol) f
             JOIN positions_eod e ON e.session_id = $id AND e.symbol = f.symbol)
        """,
        {"id": session_id},
    ).fetchone()


# -- the engine records marks once per tick-time minute -------------------------------------


class Silent(Model[BarTrendParams]):
    params_class = BarTrendParams


def test_engine_buffers_one_mark_per_symbol_per_minute():
    book = Book()
    engine = Engine(
        "r",
        Silent(BarTrendParams(), ["A"]),
        SimulatedBroker(),
        RiskGate(RiskLimits(), book),
        book,
        model_name="m",
    )
    t0 = 1_672_756_200_000_000_000  # 14:30:00 UTC
    ticks = [
        ("A", 5, 10.00),
        ("A", 50, 10.25),
        ("B", 59, 20.00),
        ("A", 125, 10.50),  # 14:32: closes 14:30; 14:31 had no ticks and gets no row
        ("B", 130, 20.50),
        ("A", 170, 10.75),
    ]
    for i, (symbol, sec, price) in enumerate(ticks):
        engine.on_events([Trade(symbol, t0 + sec * 1_000_000_000, price, 1)])
        if i == 2:
            assert engine.take_batch().marks == []  # the minute is still open
    batch = engine.take_batch()
    assert [(m.symbol, (m.ts - t0) // 1_000_000_000, m.price) for m in batch.marks] == [
        ("A", 0, 10.25),
        ("B", 0, 20.00),
    ]
    final = engine.take_batch(positions=True)  # the session's last flush closes 14:32
    assert [(m.symbol, (m.ts - t0) // 1_000_000_000, m.price) for m in final.marks] == [
        ("A", 120, 10.75),
        ("B", 120, 20.50),
    ]
    assert engine.take_batch(positions=True).marks == []  # never twice


# -- a real flow run ------------------------------------------------------------------------


@pytest.fixture
def es_twenty_minutes(tmp_path: Path) -> Path:
    """The first 20 regular-hours minutes of 2013-09-03's recorded E-mini trades."""
    window = session_window(date(2013, 9, 3))
    table = recording.load(
        recording.bundled(window.day),
        start_ns=window.open_ns,
        end_ns=window.open_ns + 20 * MINUTE_NS,
    )
    return recording.write(table, tmp_path / "es-20min.parquet")


@pytest.mark.usefixtures("prefect_harness")
def test_flow_day_pnl_reconciles_with_fills_marks_and_artifact(es_twenty_minutes, session_paths):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.session import trading_session
    from tradeday.config import parse_session_config

    config = parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"recording": str(es_twenty_minutes)},
            **session_paths,
        }
    )
    result = trading_session(config=config, session_date=date(2013, 9, 3))
    assert result["status"] == "completed" and result["final_positions"] == {}
    run_id = result["run_id"]

    # the ledger's marks are the last print of every minute, as the recording has them
    trades = recording.load(es_twenty_minutes).to_pandas()
    last = trades.groupby(trades["ts"] // MINUTE_NS * MINUTE_NS)["price"].last()
    ledger = Ledger(session_paths["ledger_url"])
    with ledger.engine.connect() as conn:
        marks = conn.exec_driver_sql(
            "SELECT ts, price FROM marks WHERE run_id = ? ORDER BY ts", (run_id,)
        ).fetchall()
    ledger.close()
    assert len(marks) == 20
    assert marks == list(zip(last.index.tolist(), last.tolist(), strict=True))

    con = duckdb.connect(session_paths["report_path"], read_only=True)
    net, cash, open_value = reconcile(con, run_id)
    assert open_value == 0  # flat after the flatten
    assert net == approx(cash)
    assert net == approx(result["net"])
    assert con.execute("SELECT count(*) FROM fills").fetchone()[0] == result["fills"] > 10
    rows = con.execute(
        "SELECT count(*), count(DISTINCT minute), last(equity ORDER BY minute) "
        "FROM equity WHERE session_id = ?",
        [run_id],
    ).fetchone()
    assert rows == (20, 20, approx(net))
    session = con.execute(
        "SELECT flow_run_id, status, ticks, max_drawdown >= 0, sharpe IS NOT NULL "
        "FROM sessions WHERE session_id = ?",
        [run_id],
    ).fetchone()
    assert session[1:] == ("completed", len(trades), True, True)
    con.close()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[session[0]]))
        )
    (summary,) = [a for a in artifacts if a.key == "session-summary"]
    assert "## Every session on 2013-09-03" in summary.data
    assert f"| 2013-09-03 | volume_modulo | - | completed | {result['fills']:,} |" in summary.data
    assert f"| {report.money(net)} |" in summary.data
    assert "**Net P&L per model**" in summary.data


# -- P&L on the bar days --------------------------------------------------------------------


def test_every_bar_session_reconciles_with_its_fills(five_days):
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    for run_id in five_days["runs"]:
        net, cash, open_value = reconcile(con, run_id)
        assert open_value == 0
        assert net == approx(cash)
        assert con.execute(
            "SELECT last(equity ORDER BY minute) FROM session_equity WHERE session_id = ?",
            [run_id],
        ).fetchone()[0] == approx(net)
    assert con.execute(
        "SELECT count(*), count(DISTINCT session_date) FROM sessions"
    ).fetchone() == (10, 5)
    # 390 minutes a day (09:30-15:59 bars), both symbols, every session
    assert con.execute("SELECT count(*) FROM equity").fetchone()[0] == 10 * 390 * 2
    con.close()


def test_open_positions_are_valued_at_the_last_mark(tmp_path: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    run_id = replay_bars(ledger, DAYS[0], "bar_trend", flatten=False)
    path = write_report(ledger, run_id, tmp_path / "r.duckdb")
    ledger.close()
    con = duckdb.connect(str(path), read_only=True)
    net, cash, open_value = reconcile(con, run_id)
    positions = con.execute(
        "SELECT symbol, qty, mark FROM positions_eod WHERE qty <> 0 ORDER BY symbol"
    ).fetchall()
    assert positions  # the model ends the day holding something
    assert open_value == approx(sum(q * m for _, q, m in positions))
    assert net == approx(cash + open_value)
    # the last mark is each symbol's last recorded bar close of the day
    window = session_window(DAYS[0])
    bars = recording.load(
        recording.bundled(DAYS[0]), SYMBOLS, window.open_ns, window.close_ns
    ).to_pandas()
    closes = bars.groupby("symbol")["close"].last()
    assert [(s, m) for s, _, m in positions] == [(s, closes[s]) for s, _, _ in positions]
    assert con.execute("SELECT status FROM sessions").fetchone() == ("failed",)
    con.close()


# -- writes ---------------------------------------------------------------------------------


def test_writing_a_session_twice_leaves_one_copy(five_days):
    before = snapshot(five_days["path"])
    write_report(five_days["ledger"], five_days["runs"][3], five_days["path"])
    assert snapshot(five_days["path"]) == before
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    assert con.execute(
        "SELECT count(*) FROM sessions WHERE session_id = ?", [five_days["runs"][3]]
    ).fetchone() == (1,)
    con.close()


def test_a_failed_write_leaves_the_previous_state(five_days, monkeypatch):
    path, run_id = five_days["path"], five_days["runs"][0]
    before = snapshot(path)
    real_merge = report._merge_table
    merged: list[str] = []

    def merge_then_fail(con, table):
        if len(merged) == 3:  # sessions, orders and fills replaced; then a crash
            raise RuntimeError("disk full")
        real_merge(con, table)
        merged.append(table)

    monkeypatch.setattr(report, "_merge_table", merge_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(five_days["ledger"], run_id, path)
    assert merged == ["sessions", "orders", "fills"]
    assert snapshot(path) == before
    assert list(report.staged_runs(path)) == [run_id]  # kept for the next write
    monkeypatch.setattr(report, "_merge_table", real_merge)
    write_report(five_days["ledger"], run_id, path)  # the file is not left locked
    assert snapshot(path) == before
    assert report.staged_runs(path) == {}


KILLED_WRITER = """
import sys, time
import tradeday.report as report
from tradeday.ledger import Ledger

ledger_url, run_id, path, marker = sys.argv[1:]
real_merge = report._merge_table

def merge_slowly(con, table):
    real_merge(con, table)
    open(marker, "w").write(table)  # the old rows are deleted and new ones going in
    time.sleep(600)

report._merge_table = merge_slowly
report.write_report(Ledger(ledger_url), run_id, path)
"""


def test_a_killed_write_leaves_the_previous_state(five_days):
    path, run_id = five_days["path"], five_days["runs"][1]
    before = snapshot(path)
    marker = five_days["tmp"] / "writing"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_WRITER,
            five_days["ledger"].url,
            run_id,
            str(path),
            str(marker),
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert writer.poll() is None, "the writer exited before it started writing"
            assert time.monotonic() < deadline, "the writer never reached the inserts"
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert marker.read_text() == "sessions"
    assert snapshot(path) == before
    write_report(five_days["ledger"], run_id, path)  # the killed writer's staged rows too
    assert snapshot(path) == before and report.staged_runs(path) == {}


def test_a_writer_waits_while_another_process_holds_the_file(five_days, monkeypatch):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('holding', flush=True); sys.stdin.readline(); c.close()",
            str(five_days["path"]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    waits: list[float] = []

    def release(seconds: float) -> None:
        waits.append(seconds)
        if holder.poll() is None:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait()

    monkeypatch.setattr(report, "sleep", release)
    try:
        write_report(five_days["ledger"], five_days["runs"][2], five_days["path"])
    finally:
        holder.kill()
        holder.wait()
    assert waits == [report.LOCK_RETRY_S]


# -- schema versions ------------------------------------------------------------------------

V1_DDL = """
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
INSERT OR REPLACE INTO meta VALUES ('schema_version', '1');
INSERT INTO sessions VALUES ('td-20221230-old', DATE '2022-12-30', '', '', 'volume_modulo',
    '{}', ['ES'], 'replay', 'simulated', 'completed', 'ended at close',
    TIMESTAMPTZ '2022-12-30 14:30:00+00', TIMESTAMPTZ '2022-12-30 20:55:00+00',
    1000, 0, 0, 4, 4, 0);
INSERT INTO pnl VALUES ('td-20221230-old', DATE '2022-12-30', 'volume_modulo', 'ES', 12.5, 0,
    0.5, 12.0, 4, 16400.0, 0.5, 0);
"""


def _columns(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {t})").fetchall()
            for t in (*TABLES, "session_equity", "daily_summary")
        }
    finally:
        con.close()


def test_a_v1_file_is_upgraded_when_written(five_days, tmp_path: Path):
    old = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(old))
    con.execute(V1_DDL)
    con.close()

    write_report(five_days["ledger"], five_days["runs"][0], old)

    assert _columns(old) == _columns(five_days["path"])  # same schema as a new file
    con = duckdb.connect(str(old), read_only=True)
    assert con.execute("SELECT value FROM meta").fetchall() == [(str(REPORT_SCHEMA_VERSION),)]
    rows = con.execute(
        "SELECT session_id, net, win_rate, max_drawdown IS NULL, sharpe IS NULL "
        "FROM daily_summary ORDER BY session_date"
    ).fetchall()
    assert rows[0] == ("td-20221230-old", 12.0, None, True, True)  # v1 values kept, new NULL
    assert rows[1][0] == five_days["runs"][0]
    assert rows[1][2] is not None and rows[1][3:] == (False, False)  # v2 rows are complete
    assert con.execute("SELECT count(*) FROM pnl WHERE wins IS NULL").fetchone() == (1,)
    con.close()


def test_a_v1_file_is_upgraded_when_read(tmp_path: Path):
    old = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(old))
    con.execute(V1_DDL)
    con.close()
    con = open_report(old)
    assert con.execute("SELECT value FROM meta").fetchone() == (str(REPORT_SCHEMA_VERSION),)
    assert con.execute("SELECT session_id, net FROM daily_summary").fetchall() == [
        ("td-20221230-old", 12.0)
    ]
    con.close()


def test_a_file_from_a_newer_tradeday_is_refused(five_days, tmp_path: Path):
    newer = tmp_path / "v99.duckdb"
    con = duckdb.connect(str(newer))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.close()
    with pytest.raises(report.ReportError, match="newer tradeday"):
        write_report(five_days["ledger"], five_days["runs"][0], newer)


# -- outputs --------------------------------------------------------------------------------


def _expected_net_per_model(path: Path, dates: list[date]) -> dict[str, float]:
    """Net P&L per model straight from the fills: flat sessions, so the cash change."""
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute(
        "SELECT model, sum(CASE side WHEN 'sell' THEN qty * price ELSE -qty * price END) - sum(fee) "
        "FROM fills WHERE session_date IN (SELECT unnest(?::DATE[])) GROUP BY model",
        [dates],
    ).fetchall()
    con.close()
    return dict(rows)


def _rows(out: str, day: str) -> int:
    """Rows of the printed sessions table for ``day``."""
    return sum(1 for line in out.splitlines() if line.startswith(f"│ {day} "))


def test_report_last_5_prints_the_summary_and_writes_the_png(five_days):
    path = five_days["path"]
    png = path.with_name("reports-equity-2023-01-03_2023-01-09.png")
    png.unlink(missing_ok=True)
    out = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "tradeday"),
            "report",
            "--last",
            "5",
            "--report-path",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
        check=True,
    ).stdout
    assert "Sessions" in out and "Net P&L per model" in out
    for day in DAYS:
        assert _rows(out, f"{day:%Y-%m-%d}") == 2  # one row per model
    totals = _expected_net_per_model(path, DAYS)
    for model, net in totals.items():
        line = next(x for x in out.splitlines() if re.match(rf"\W*{model}\W+5\W", x))
        assert f"{net:,.2f}" in line
    assert f"equity plot: {png}" in out.replace("\n", "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_report_for_one_date_and_for_an_empty_day(five_days, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    path = five_days["path"]
    assert cli_main(["report", "--date", "2023-01-05", "--report-path", str(path)]) == 0
    out = capsys.readouterr().out
    assert _rows(out, "2023-01-05") == 2 and "2023-01-04" not in out
    assert path.with_name("reports-equity-2023-01-05.png").exists()
    assert cli_main(["report", "--date", "2023-01-07", "--report-path", str(path)]) == 1
    assert "no sessions" in capsys.readouterr().out
    assert cli_main(["report", "--report-path", str(path.with_name("none.duckdb"))]) == 1


def test_summary_markdown_for_some_days(five_days):
    text = summary_markdown_for(five_days["path"], DAYS[:2])
    totals = _expected_net_per_model(five_days["path"], DAYS[:2])
    assert text.count("| 2023-01-03 |") == 2 and text.count("| 2023-01-04 |") == 2
    assert "2023-01-05" not in text
    for model, net in totals.items():
        assert re.search(
            rf"\| {model} \| 2 \| [\d,]+ \| [\d,.]+ \| {re.escape(report.money(net))} \|", text
        )
    assert summary_markdown_for(five_days["path"], [date(2023, 1, 7)]).startswith("_No sessions")


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql[^\n]*\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_every_sql_block_in_the_docs_runs_and_returns_rows(five_days):
    blocks = _sql_blocks()
    assert len(blocks) >= 5
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    try:
        for sql in blocks:
            rows = con.execute(sql).fetchall()
            # these five days hold nothing overnight: the overnight SQL returns rows on
            # tests/test_docs.py's report (and test_overnight_holds.py checks the values)
            if "overnight_pnl" in sql or "FROM carried" in sql:
                continue
            assert rows, f"no rows from:\n{sql}"
    finally:
        con.close()


def test_the_docs_sharpe_and_drawdown_sql_agree_with_the_report(five_days):
    (sql,) = [b for b in _sql_blocks() if "sqrt(252 * 390)" in b]
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    recomputed = {r[0]: r[1:] for r in con.execute(sql).fetchall()}
    stored = con.execute("SELECT session_id, max_drawdown, sharpe FROM sessions").fetchall()
    con.close()
    assert len(recomputed) == len(stored) == 10
    for session_id, drawdown, sharpe in stored:
        assert recomputed[session_id] == (approx(drawdown), pytest.approx(sharpe, rel=1e-9))


# -- every run is kept ----------------------------------------------------------------------


def ledger_counts(ledger: Ledger, run_id: str) -> tuple[int, int]:
    """The run's orders and fills in the ledger."""
    with ledger.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(row).where(row.run_id == run_id)).scalar()
            for row in (OrderRow, FillRow)
        )


def report_counts(path: Path, run_id: str) -> tuple[int, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return tuple(
            con.execute(f"SELECT count(*) FROM {t} WHERE session_id = ?", [run_id]).fetchone()[0]
            for t in ("orders", "fills")
        )
    finally:
        con.close()


def test_every_run_is_kept_and_daily_summary_reads_the_latest(tmp_path: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    first = replay_bars(ledger, DAYS[0], "bar_trend")
    # a rerun of that day, model and deployment, a minute later, that ends holding positions
    rerun = replay_bars(
        ledger, DAYS[0], "bar_trend", flatten=False, run_id="td-rerun", started_late_ns=MINUTE_NS
    )
    path = tmp_path / "reports.duckdb"
    write_report(ledger, first, path)
    write_report(ledger, rerun, path)
    before = snapshot(path)
    write_report(ledger, first, path)  # rewriting a run is idempotent and erases no other
    assert snapshot(path) == before
    for run_id in (first, rerun):
        assert report_counts(path, run_id) == ledger_counts(ledger, run_id) != (0, 0)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT session_id, status, latest FROM run_summary").fetchall() == [
        (first, "completed", False),
        (rerun, "failed", True),
    ]
    assert con.execute("SELECT session_id FROM daily_summary").fetchall() == [(rerun,)]
    assert con.execute("SELECT session_id FROM latest_sessions").fetchall() == [(rerun,)]
    rerun_net = con.execute("SELECT net FROM daily_summary").fetchone()[0]
    con.close()
    ledger.close()
    text = summary_markdown_for(path, [DAYS[0]])
    assert f"| {first} (rerun since) |" in text and f"| {rerun} |" in text
    # the per-model total counts the day once, at its latest run
    assert "| bar_trend | 1 | " in text and f"| {report.money(rerun_net)} |" in text


def _shell(path: Path, sql: str) -> subprocess.CompletedProcess:
    """``sql`` through the command the demo and the artifact print (the DuckDB shell)."""
    return subprocess.run(
        [*shlex.split(report.shell_command(path)), "-csv", "-noheader", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_duckdb_shell_reads_the_report(five_days):
    assert report.shell_command(ROOT / "data" / "reports.duckdb", absolute=False) == (
        ".venv/bin/duckdb -readonly data/reports.duckdb"
        if Path.cwd() == ROOT
        else f"{ROOT}/.venv/bin/duckdb -readonly {ROOT}/data/reports.duckdb"
    )
    done = _shell(five_days["path"], "SELECT count(*), sum(trades) FROM daily_summary")
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    trades = con.execute("SELECT count(*) FROM fills").fetchone()[0]
    con.close()
    assert done.stdout.strip() == f"10,{trades}"


def test_daily_summary_shows_no_float_noise(five_days):
    con = duckdb.connect(str(five_days["path"]), read_only=True)
    plain = con.execute(
        "SELECT sum(turnover), sum(realized), sum(net) FROM pnl GROUP BY session_id"
    ).fetchall()
    money = ("turnover", "realized", "unrealized", "fees", "net", "max_drawdown")
    shown = con.execute(f"SELECT {', '.join(money)} FROM daily_summary").fetchall()
    con.close()
    assert any(v != round(v, 6) for row in plain for v in row)  # plain sums do show noise
    assert len(shown) == 10
    assert all(v == round(v, 6) for row in shown for v in row)


# A report written by tradeday's schema-v2 code (commit 6b0ffb2, duckdb 2.0.0, so in
# storage v2.0.0, which the DuckDB shell refuses): three 20-minute bar sessions of
# replay_bars (2023-01-03 bar_trend and bar_fade, 2023-01-04 bar_trend), gzipped.
V2_FILE = ROOT / "tests" / "fixtures" / "report-v2.duckdb.gz"
V2_RUNS = ["td-20230103-bar_fade", "td-20230103-bar_trend", "td-20230104-bar_trend"]


def test_a_v2_file_is_migrated_keeping_its_rows_and_the_shell_reads_it(tmp_path: Path):
    path = tmp_path / "reports.duckdb"
    path.write_bytes(gzip.decompress(V2_FILE.read_bytes()))
    before = snapshot(path)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM meta").fetchall() == [("2",)]
    assert report.storage_version(con) == "v2.0.0+"
    con.close()
    assert _shell(path, "SELECT 1").returncode != 0  # the shell cannot read it yet

    open_report(path).close()

    after = snapshot(path)  # every row kept, unchanged; orders gained tif (v5), NULL here
    assert {o[-1] for o in after["orders"]} == {None}
    after["orders"] = [o[:-1] for o in after["orders"]]
    assert after == before
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM meta").fetchall() == [(str(REPORT_SCHEMA_VERSION),)]
    assert report.storage_version(con) == f"{report.SHELL_STORAGE_VERSION}+"
    con.close()
    done = _shell(path, "SELECT session_id, turnover, net FROM daily_summary ORDER BY ALL")
    assert done.returncode == 0, done.stderr
    # v2's daily_summary showed 79589.80718999999 and -29.711570000000002
    assert done.stdout.splitlines() == [
        "td-20230103-bar_fade,57513.21981,43.913747",
        "td-20230103-bar_trend,79589.80719,-82.95908",
        "td-20230104-bar_trend,75892.701902,-29.71157",
    ]

    # a rerun of a migrated day keeps the old run
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    rerun = replay_bars(ledger, DAYS[0], "bar_trend", run_id="td-rerun", started_late_ns=1)
    write_report(ledger, rerun, path)
    ledger.close()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT session_id, latest FROM run_summary").fetchall() == [
        (V2_RUNS[0], True),
        (V2_RUNS[1], False),
        (rerun, True),
        (V2_RUNS[2], True),
    ]
    con.close()


# -- a report never fails a session ---------------------------------------------------------

SHELL = Path(sys.executable).parent / "duckdb"
HOLDERS = {
    # the DuckDB shell, read-only as the docs say: it blocks a writer all the same
    "shell -readonly": [str(SHELL), "-readonly"],
    "python read-write": [
        sys.executable,
        "-c",
        "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
        "print('holding', flush=True); sys.stdin.readline()",
    ],
}


@contextmanager
def held(path: Path, how: str) -> Iterator[subprocess.Popen]:
    """Another process with ``path`` open, until the block ends."""
    holder = subprocess.Popen(
        [*HOLDERS[how], str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if how.startswith("shell"):
            holder.stdin.write("SELECT 'hold' || 'ing';\n")
            holder.stdin.flush()
        while "holding" not in (line := holder.stdout.readline()):
            assert line, f"the holder exited: {holder.wait()}"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def holder_pid(holder: subprocess.Popen) -> int:
    """The process that holds the file: the holder, or the DuckDB binary that
    .venv/bin/duckdb (a Python entry point) runs as its child."""
    children = psutil.Process(holder.pid).children()
    return children[0].pid if children else holder.pid


def wait_for_writer(path: Path, line: str) -> None:
    """Until the background writer's log has ``line`` (bounded, not timed)."""
    log = report.pending_dir(path) / "writer.log"
    deadline = time.monotonic() + 120
    while line not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"no {line!r} in the writer's log"
        time.sleep(0.2)


def a_report_with(ledger: Ledger, run_id: str, path: Path) -> None:
    write_report(ledger, run_id, path)
    assert report.staged_runs(path) == {}


@pytest.mark.parametrize("how", list(HOLDERS))
def test_a_held_report_is_deferred_and_lands_once_free(tmp_path: Path, how: str):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    earlier = replay_bars(ledger, DAYS[0], "bar_trend")
    run_id = replay_bars(ledger, DAYS[1], "bar_trend")
    path = tmp_path / "reports.duckdb"
    a_report_with(ledger, earlier, path)
    with held(path, how) as holder:
        pid = holder_pid(holder)
        delivery = deliver_report(ledger.url, run_id, path, wait_s=1.0)
        assert delivery.status == "deferred"
        assert f"PID {pid} (" in delivery.detail
        assert delivery.message().startswith(f"report deferred: {path} is held by PID ")
        assert list(report.staged_runs(path)) == [run_id]
        wait_for_writer(path, f"{path} is held by PID {pid}")  # it started and waits
        assert list(report.staged_runs(path)) == [run_id]
    wait_for_writer(path, f"wrote {run_id} into {path}")
    assert report.staged_runs(path) == {}
    assert report_counts(path, run_id) == ledger_counts(ledger, run_id) != (0, 0)
    assert report_counts(path, earlier) == ledger_counts(ledger, earlier)
    ledger.close()


@pytest.mark.usefixtures("prefect_harness")
def test_a_session_completes_while_the_shell_holds_its_report(es_twenty_minutes, session_paths):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.session import trading_session
    from tradeday.config import parse_session_config

    config = parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"recording": str(es_twenty_minutes)},
            **session_paths,
        }
    )
    path = Path(session_paths["report_path"])
    report.connect(path, read_only=False).close()  # an empty report the shell can open
    with held(path, "shell -readonly") as holder:
        state = trading_session(config=config, session_date=date(2013, 9, 3), return_state=True)
        assert state.is_completed()
        result = state.result()
        assert result["status"] == "completed" and result["final_positions"] == {}
        held_by = f"is held by PID {holder_pid(holder)} ("
        assert f"report deferred: {path.resolve()} {held_by}" in state.message
        assert result["report"] in state.message
    wait_for_writer(path, f"wrote {result['run_id']} into {path.resolve()}")
    ledger = Ledger(session_paths["ledger_url"])
    assert report_counts(path, result["run_id"]) == ledger_counts(ledger, result["run_id"])
    assert ledger_counts(ledger, result["run_id"]) == (result["orders"], result["fills"])
    ledger.close()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (summary,) = [a for a in artifacts if a.key == "session-summary"]
    assert f"| Report | {result['report']} |" in summary.data
    assert f"```\n{report.shell_command(path, absolute=True)}\n```" in summary.data
    assert f"```\n{path.resolve()}\n```" in summary.data and "file://" not in summary.data


@pytest.mark.usefixtures("prefect_harness")
def test_the_end_of_day_report_flow_writes_every_run_of_the_day_or_defers(tmp_path: Path):
    from flows.report import end_of_day_report

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    runs = [replay_bars(ledger, DAYS[0], m) for m in ("bar_trend", "bar_fade")]
    path = tmp_path / "reports.duckdb"
    kw = {"session_date": DAYS[0], "ledger_url": ledger.url, "report_path": str(path)}
    state = end_of_day_report(**kw, return_state=True)
    assert state.is_completed() and state.message == "2 run(s) written"
    assert sorted(r["report"] for r in state.result()["runs"]) == ["written", "written"]
    with held(path, "shell -readonly") as holder:
        state = end_of_day_report(**kw, return_state=True)  # a rerun of the flow
        assert state.is_completed()
        assert f"is held by PID {holder_pid(holder)} (" in state.message
        assert [r["report"] for r in state.result()["runs"]] == ["deferred", "deferred"]
    wait_for_writer(path, f"wrote {sorted(runs)[-1]} into {path}")
    for run_id in runs:
        assert report_counts(path, run_id) == ledger_counts(ledger, run_id) != (0, 0)
    ledger.close()


@contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable for real: chattr +i as root (who ignores modes), else chmod."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip(f"chattr +i is not supported on {folder}'s filesystem")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_an_unwritable_report_directory_is_named_and_the_ledger_kept(tmp_path: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    run_id = replay_bars(ledger, DAYS[0], "bar_trend")
    kept = ledger_counts(ledger, run_id)
    folder = tmp_path / "locked"
    folder.mkdir()
    path = folder / "reports.duckdb"
    with unwritable(folder):
        with pytest.raises(report.ReportError) as refused:
            check_writable(path)
        delivery = deliver_report(ledger.url, run_id, path)
    for text in (str(refused.value), delivery.detail):
        assert text.startswith(f"report_path {path}: {folder} is not writable (PermissionError")
        assert "choose a writable report_path or fix the directory's permissions" in text
    assert delivery.status == "failed"
    assert ledger_counts(ledger, run_id) == kept
    assert list(folder.iterdir()) == []
    ledger.close()


def test_a_run_the_ledger_cannot_give_is_a_failed_delivery_naming_it(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url).close()
    delivery = deliver_report(url, "td-missing", tmp_path / "reports.duckdb")
    assert delivery.status == "failed"
    assert delivery.detail.startswith("run td-missing could not be read from the ledger (KeyError")
    assert not (tmp_path / "reports.duckdb").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_session_with_an_unwritable_report_path_is_refused_before_trading(
    es_twenty_minutes, session_paths, tmp_path: Path
):
    from flows.session import trading_session
    from tradeday.config import parse_session_config

    folder = tmp_path / "locked"
    folder.mkdir()
    path = folder / "reports.duckdb"
    config = parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"recording": str(es_twenty_minutes)},
            **{**session_paths, "report_path": str(path)},
        }
    )
    with unwritable(folder), pytest.raises(report.ReportError) as refused:
        trading_session(config=config, session_date=date(2013, 9, 3))
    assert str(refused.value).startswith(f"report_path {path}: {folder} is not writable")
    ledger = Ledger(session_paths["ledger_url"])
    assert ledger.runs("2013-09-03") == []  # nothing traded
    ledger.close()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: smaller than any DuckDB file. Needs root (mount); skips without."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_named_and_the_ledger_kept(tmp_path: Path, full_disk: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    run_id = replay_bars(ledger, DAYS[0], "bar_trend")
    kept = ledger_counts(ledger, run_id)
    path = full_disk / "reports.duckdb"
    check_writable(path)  # an empty file still fits
    delivery = deliver_report(ledger.url, run_id, path)
    assert delivery.status == "failed"
    assert delivery.detail.startswith(f"report_path {path}: the disk holding {full_disk} is full")
    assert "free some space there, then write the report from the ledger" in delivery.detail
    assert ledger_counts(ledger, run_id) == kept
    assert list(report.pending_dir(path).iterdir()) == []  # no partial file left behind
    ledger.close()


# -- write time -----------------------------------------------------------------------------


def test_write_time_for_a_day_with_50000_orders(tmp_path: Path):
    """Measured, not asserted: the number goes in docs/reports.md."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    t0 = 1_672_756_200_000_000_000
    symbols = ["AAPL", "MSFT", "NVDA", "IBM"]
    ledger.start_run(
        run_id="big",
        session_date="2023-01-03",
        model="m",
        params={},
        symbols=symbols,
        feed="replay",
        broker="simulated",
        started_ns=t0,
        heartbeat_ns=t0,
        counters={},
    )
    rng = random.Random(5)
    batch = Batch()
    for i in range(50_000):
        ts = t0 + i * (390 * MINUTE_NS // 50_000)
        symbol, side, qty = symbols[i % 4], rng.choice(("buy", "sell")), rng.randint(1, 10)
        price = round(100 + rng.random() * 5, 2)
        coid = f"big-{i}"
        batch.new_orders.append(
            OrderRecord(
                client_order_id=coid,
                run_id="big",
                model="m",
                symbol=symbol,
                side=Side(side),
                qty=qty,
                limit_price=None,
                ts=ts,
                status=OrderStatus.FILLED,
                filled_qty=qty,
                avg_fill_price=price,
                reason="",
                purpose="model",
                tag="",
            )
        )
        batch.fills.append(
            FillRecord(
                run_id="big",
                model="m",
                client_order_id=coid,
                symbol=symbol,
                side=Side(side),
                qty=qty,
                price=price,
                fee=0.005 * qty,
                ts=ts,
            )
        )
    batch.marks = [
        MarkRecord("big", s, t0 + m * MINUTE_NS, 102.5) for m in range(390) for s in symbols
    ]
    ledger.write(batch, "big")
    path = tmp_path / "r.duckdb"
    times = []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        write_report(ledger, "big", path)
        times.append(
            f"{time.perf_counter() - wall:.3f} s wall / {time.process_time() - cpu:.3f} s CPU"
        )
    ledger.close()
    print(f"\nreport write, 50,000 orders + 50,000 fills: {'; '.join(times)}")
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM orders").fetchone() == (50_000,)
    assert con.execute("SELECT count(*) FROM equity").fetchone() == (390 * 4,)
    net, cash, _ = reconcile(con, "big")  # no positions rows: value what is open at the mark
    open_value = con.execute(
        "SELECT sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) * 102.5::DOUBLE FROM fills"
    ).fetchone()[0]
    assert open_value != 0 and net == approx(cash + open_value)
    con.close()
