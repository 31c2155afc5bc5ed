"""Positions held overnight across real sessions, through the ledger.

Real trading-session flow runs (Prefect test harness) replaying the bundled January-2023
bars, a real SQLite ledger, the real DuckDB report, and a real SIGKILL of a session
process. Each night's P&L is computed here straight from the Parquet recording.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import date
from itertools import pairwise

import pandas as pd
import pytest
from conftest import wait_until
from rich.console import Console
from sqlalchemy import create_engine, text

from flows.replay_range import replay_range_flow
from flows.session import trading_session
from tests.alpaca_server import AlpacaTestServer
from tradeday import recording, report_cli
from tradeday.brokers.alpaca import AlpacaPaperBroker
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.calendar import session_window
from tradeday.config import ConfigError, parse_session_config
from tradeday.events import Side, TimeInForce
from tradeday.ledger import SCHEMA_VERSION, Ledger, schema_version
from tradeday.records import (
    Batch,
    CarriedRecord,
    CarryStatus,
    FillRecord,
    MarkRecord,
    OrderRecord,
    OrderStatus,
)
from tradeday.recovery import close_carried, recover
from tradeday.replay.server import ReplayServer
from tradeday.replay_range import plan
from tradeday.report import open_report, summary_markdown_for
from tradeday.sources import REPLAY_KEY
from tradeday.wiring import Credentials, account_of

SHARES = 10
DAYS = [date(2023, 1, d) for d in (11, 12, 13, 17, 18)]  # 14-15 a weekend, 16 MLK Day


def bars(symbol: str = "AAPL") -> pd.DataFrame:
    table = pd.read_parquet(recording.bundled(DAYS[0]), columns=["ts", "symbol", "open", "close"])
    return table[table["symbol"] == symbol].sort_values("ts")


def official(day: date, frame: pd.DataFrame) -> tuple[float, float]:
    """(open, close) of a session from its bars: the first bar's open at or after the open,
    the last bar's close among those that end by the close. Independent of tradeday's code."""
    w = session_window(day)
    inside = frame[(frame["ts"] >= w.open_ns) & (frame["ts"] + 60 * 10**9 <= w.close_ns)]
    return float(inside["open"].iloc[0]), float(inside["close"].iloc[-1])


def config(paths: dict[str, str], **feed) -> dict:
    return {
        "model": {"name": "buy_close_sell_open", "close_shares": SHARES},
        "symbols": ["AAPL"],
        "close_buffer_minutes": 0,  # the cls order fills at the close (docs/models.md)
        "feed": feed,
        **paths,
    }


def report_rows(path: str, sql: str) -> list[tuple]:
    con = open_report(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_buy_close_sell_open_holds_each_night_through_the_ledger_and_the_report(
    prefect_harness, session_paths, monkeypatch
):
    raw = config(session_paths)
    day1 = trading_session(config=parse_session_config(raw), session_date=DAYS[0])
    assert (day1["status"], day1["carried"], day1["final_positions"]) == (
        "completed",
        {"AAPL": SHARES},
        {"AAPL": SHARES},
    )

    # between the sessions: the ledger holds it for the model's next session, at the close
    frame = bars()
    _, close1 = official(DAYS[0], frame)
    with Ledger(raw["ledger_url"]) as ledger:
        (held,) = ledger.carried()
    assert (held.status, held.model, held.account, held.symbol, held.qty) == (
        CarryStatus.OPEN,
        "buy_close_sell_open",
        "simulated",
        "AAPL",
        SHARES,
    )
    assert held.from_run_id == day1["run_id"] and held.taken_run_id is None
    assert held.cost == pytest.approx(close1) and held.mark == pytest.approx(close1)
    assert report_rows(
        raw["report_path"], "SELECT session_id, symbol, qty, close_mark, status FROM carried"
    ) == [(day1["run_id"], "AAPL", SHARES, pytest.approx(close1), "open")]

    # the rest of the range through the replay-range flow: each day takes up the last one's
    state = replay_range_flow(
        first=DAYS[1], last=DAYS[-1], config=parse_session_config(raw), return_state=True
    )
    data = state.result()
    assert data["closed"] == {"2023-01-16": "Dr. Martin Luther King Jr. Day"}
    sessions = [day1, *data["sessions"]]
    assert [s["session_date"] for s in sessions] == [d.isoformat() for d in DAYS]
    assert all(s["status"] == "completed" and s["carried"] == {"AAPL": SHARES} for s in sessions)

    expected = []
    for before, after in pairwise(DAYS):
        open_next = official(after, frame)[0]
        close = official(before, frame)[1]
        expected.append((before, after, SHARES, close, open_next, SHARES * (open_next - close)))
    nights = report_rows(
        raw["report_path"],
        "SELECT session_date, next_date, qty, close_mark, open_price, overnight_pnl "
        "FROM overnight_pnl ORDER BY session_date",
    )
    assert nights == [tuple(pytest.approx(v) for v in row) for row in expected]
    # tradeday report shows the same nights per model and symbol, from the same view
    console = Console(width=200, record=True)
    monkeypatch.setattr(report_cli, "Console", lambda **_: console)
    assert report_cli.run(raw["report_path"], last=len(DAYS)) == 0
    out = console.export_text()
    total = sum(row[-1] for row in expected)
    assert re.search(
        rf"buy_close_sell_open[ │]+AAPL[ │]+{len(expected)}[ │]+{SHARES * len(expected)}"
        rf"[ │]+{re.escape(f'{total:,.2f}')} │",
        out,
    ), out

    # the session's artifact: the night that ended at its open, the one that began at its close
    def night(before, after, qty, close, open_next, pnl) -> str:
        return (
            f"| {before:%Y-%m-%d} → {after:%Y-%m-%d} | buy_close_sell_open | AAPL | {qty:,} "
            f"| {close:,.2f} | {open_next:,.2f} | {pnl:,.2f} |"
        )

    text_day2 = summary_markdown_for(raw["report_path"], [DAYS[1]])
    assert [line for line in text_day2.splitlines() if "→" in line] == [
        night(*row) for row in expected[:2]
    ]
    last_close = official(DAYS[-1], frame)[1]
    assert [
        line
        for line in summary_markdown_for(raw["report_path"], [DAYS[-1]]).splitlines()
        if "→" in line
    ] == [
        night(*expected[-1]),
        f"| {DAYS[-1]:%Y-%m-%d} → next open | buy_close_sell_open | AAPL | {SHARES} "
        f"| {last_close:,.2f} | - | held |",
    ]
    with Ledger(raw["ledger_url"]) as ledger:
        carried = ledger.carried()
        for row, nxt in zip(carried, sessions[1:], strict=False):
            assert (row.status, row.taken_run_id) == (CarryStatus.TAKEN, nxt["run_id"])
        assert carried[-1].status is CarryStatus.OPEN  # the last night is still ahead
        # each day sold exactly what it took up, at the open, and bought again at the close
        for session, day in zip(sessions[1:], DAYS[1:], strict=True):
            fills = [(f.side, f.qty, f.price) for f in ledger.fills(session["run_id"])]
            opening, closing = official(day, frame)
            assert fills == [
                ("sell", SHARES, pytest.approx(opening)),
                ("buy", SHARES, pytest.approx(closing)),
            ]
    total = sum(n[-1] for n in expected)
    ((net, overnight, count, sessions_n),) = report_rows(
        raw["report_path"],
        "SELECT net, overnight_pnl, nights, sessions FROM multi_day_summary "
        "WHERE model = 'buy_close_sell_open'",
    )
    assert (net, overnight, count, sessions_n) == (
        pytest.approx(total),
        pytest.approx(total),
        4,
        5,
    )
    tifs = report_rows(raw["report_path"], "SELECT DISTINCT side, tif FROM orders ORDER BY side")
    assert tifs == [("buy", "cls"), ("sell", "opg")]


def test_a_cancelled_session_holds_nothing_overnight(prefect_harness, session_paths):
    """A model stopped early has not reached its close: it ends flat (docs/operations.md)."""
    from tradeday.session import TradingSession

    cfg = parse_session_config(config(session_paths))
    session = TradingSession(cfg, session_window(DAYS[0]))
    session.start()
    result = session.shutdown("cancelled", "stopped by TerminationSignal")
    session.close()
    assert (result.carried, result.final_positions) == ({}, {})
    with Ledger(cfg.ledger_url) as ledger:
        assert ledger.carried() == []


def test_a_range_is_checked_before_it_runs(session_paths):
    cfg = parse_session_config(config(session_paths))
    with pytest.raises(ConfigError, match="last: 2023-01-11 is before first"):
        plan(cfg, DAYS[1], DAYS[0])
    with pytest.raises(
        ConfigError,
        match="no recorded data for 2023-01-31, 2023-02-01 in the bundled and live recordings",
    ):
        plan(cfg, DAYS[-1], date(2023, 2, 1))
    live = parse_session_config({**config(session_paths), "feed": {"source": "iex"}})
    with pytest.raises(ConfigError, match=r"config\.feed\.source: a range replays recorded days"):
        plan(live, DAYS[0], DAYS[1])
    (mlk,) = plan(cfg, DAYS[1], DAYS[-1]).closed
    assert (mlk.day, mlk.reason) == (date(2023, 1, 16), "Dr. Martin Luther King Jr. Day")


@pytest.mark.slow
def test_sigkill_before_the_next_open_is_recovered_without_selling_twice(
    prefect_harness, session_paths, tmp_path
):
    """Day 2's session takes up the position and sends its opening sell, then is killed
    before the open: the next start gives the position back, untraded, and the rerun
    sells it once, at the open."""
    from prefect.settings import PREFECT_API_URL

    raw = config(session_paths)
    day1 = trading_session(config=parse_session_config(raw), session_date=DAYS[0])
    assert day1["carried"] == {"AAPL": SHARES}

    # day 2 served by the test: a 09:29 bar first, then the session's bars a minute apart in
    # real time, so the killed run waits for its open with the opg sell at the broker
    w = session_window(DAYS[1])
    frame = pd.read_parquet(recording.bundled(DAYS[1]))
    frame = frame[(frame["symbol"] == "AAPL") & (frame["ts"] >= w.open_ns)]
    frame = frame[frame["ts"] < w.close_ns].head(3)
    early = frame.head(1).assign(ts=w.open_ns - 60 * 10**9)
    served = tmp_path / "day2.parquet"
    recording.write(pd.concat([early, frame]), served)
    killed_raw = {**raw, "feed": {"recording": str(served)}}
    with ReplayServer(
        served, speed=1.0, start_ns=w.open_ns - 60 * 10**9, key=REPLAY_KEY, secret=REPLAY_KEY
    ) as server:
        killed_raw["feed"]["url"] = server.url
        path = tmp_path / "day2.json"
        path.write_text(json.dumps(killed_raw))
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PREFECT_HOME": str(tmp_path),
        }
        log = tmp_path / "day2.log"
        cmd = [
            sys.executable,
            "-m",
            "tradeday.cli",
            "run",
            "--config",
            str(path),
            "--date",
            "2023-01-12",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _opg_sent(raw["ledger_url"]), 180, "the killed run's opg sell")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with Ledger(raw["ledger_url"]) as ledger:
        (killed,) = [r for r in ledger.runs() if r.session_date == "2023-01-12"]
        assert killed.status == "running" and ledger.fills(killed.run_id) == []
        (held,) = ledger.carried()
        assert (held.status, held.taken_run_id) == (CarryStatus.TAKEN, killed.run_id)

    rerun = trading_session(config=parse_session_config(raw), session_date=DAYS[1])
    assert rerun["status"] == "completed"
    opening = official(DAYS[1], bars())[0]
    close1 = official(DAYS[0], bars())[1]
    with Ledger(raw["ledger_url"]) as ledger:
        crashed = ledger.run(killed.run_id)
        assert (
            crashed.status == "crashed" and "gave back, untraded, {'AAPL': 10}" in crashed.message
        )
        assert [p.qty for p in ledger.positions(killed.run_id)] == [0]
        sells = [
            (f.run_id, f.qty, f.price)
            for r in ledger.runs()
            for f in ledger.fills(r.run_id)
            if f.side == "sell"
        ]
        assert sells == [(rerun["run_id"], SHARES, pytest.approx(opening))]  # sold once
        first = ledger.carried(from_run_id=day1["run_id"])[0]
        assert (first.status, first.taken_run_id) == (CarryStatus.TAKEN, rerun["run_id"])
    assert report_rows(raw["report_path"], "SELECT taken_by, overnight_pnl FROM overnight_pnl") == [
        (rerun["run_id"], pytest.approx(SHARES * (opening - close1)))
    ]


def _opg_sent(url: str) -> bool:
    """Whether the ledger holds a 2023-01-12 run's opg order yet (0 before its tables exist)."""
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return bool(
                con.execute(
                    text(
                        "SELECT count(*) FROM orders o JOIN runs r USING (run_id) "
                        "WHERE r.session_date = '2023-01-12' AND o.tif = 'opg'"
                    )
                ).scalar_one()
            )
    except Exception:  # tables not created yet
        return False
    finally:
        engine.dispose()


# -- the ledger and recovery, without sessions ----------------------------------------------

RUN = "td-20230111-0000dead"
CLOSE_NS = 1_673_470_740_000_000_000  # 2023-01-11 15:59 ET, the crashed run's last bar


def crashed_run(ledger: Ledger, params: dict) -> None:
    """A replayed buy_close_sell_open run whose process is gone, holding 15 AAPL at 130."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger.start_run(
        run_id=RUN,
        session_date="2023-01-11",
        model="buy_close_sell_open",
        params={"name": "buy_close_sell_open", **params},
        symbols=["AAPL"],
        feed="replay",
        broker="simulated",
        account="simulated",
        started_ns=CLOSE_NS,
        heartbeat_ns=CLOSE_NS,
        pid=dead.pid,
    )
    ledger.write(
        Batch(
            new_orders=[
                OrderRecord(
                    f"{RUN}-1",
                    RUN,
                    "buy_close_sell_open",
                    "AAPL",
                    Side.BUY,
                    15,
                    CLOSE_NS,
                    OrderStatus.FILLED,
                    filled_qty=15,
                    avg_fill_price=130.0,
                    tif=TimeInForce.CLS,
                )
            ],
            fills=[
                FillRecord(
                    RUN,
                    "buy_close_sell_open",
                    f"{RUN}-1",
                    "AAPL",
                    Side.BUY,
                    15,
                    130.0,
                    0.0,
                    CLOSE_NS,
                )
            ],
            marks=[MarkRecord(RUN, "AAPL", CLOSE_NS, 131.0)],
        ),
        RUN,
    )


def test_recovery_carries_what_the_model_may_hold_and_sells_only_the_rest(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as ledger:
        crashed_run(ledger, {"close_shares": 10, "max_overnight_position": 10})
        (rec,) = recover(ledger, SimulatedBroker(), "simulated", by="a test")
        assert (rec.closed, rec.carried, rec.left) == ({"AAPL": -5}, {"AAPL": 10}, {})
        (sold,) = [f for f in ledger.fills(RUN) if f.side == "sell"]
        assert (sold.qty, sold.price) == (5, 131.0)  # the excess, at the latest mark
        (held,) = ledger.carried()
        assert (held.carry_id, held.status, held.qty, held.cost, held.mark) == (
            f"{RUN}/AAPL",
            CarryStatus.OPEN,
            10,
            130.0,
            131.0,
        )
        run = ledger.run(RUN)
        assert (
            run.status == "crashed" and "carried for the next session {'AAPL': 10}" in run.message
        )
        # flatten-now leaves it; with include_carried it is closed, once
        assert close_carried(ledger, SimulatedBroker(), "simulated", by="a test") == {"AAPL": -10}
        assert close_carried(ledger, SimulatedBroker(), "simulated", by="a test") == {}
        (held,) = ledger.carried()
        assert (held.status, held.message) == (CarryStatus.CLOSED, "closed by a test")
        closes = [(o.client_order_id, o.qty, o.status) for o in ledger.orders(RUN)]
        assert closes[-1] == (f"{RUN}-uncarry-AAPL", 10, OrderStatus.FILLED)
        assert sum(f.signed_qty for f in ledger.fills(RUN)) == 0


def test_a_model_that_may_not_hold_is_flattened_whole(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as ledger:
        crashed_run(ledger, {"close_shares": 10, "max_overnight_position": 0})
        (rec,) = recover(ledger, SimulatedBroker(), "simulated", by="a test")
        assert (rec.closed, rec.carried) == ({"AAPL": -15}, {})
        assert ledger.carried() == []


def test_a_version_1_ledger_is_migrated_in_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as con:  # the orders table as schema version 1 had it
        con.execute(text("CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY)"))
        con.execute(
            text(
                "CREATE TABLE orders (client_order_id VARCHAR(64) PRIMARY KEY, run_id VARCHAR(64),"
                " model VARCHAR(64), symbol VARCHAR(32), side VARCHAR(4), qty INTEGER,"
                " limit_price FLOAT, ts BIGINT, status VARCHAR(16), filled_qty INTEGER,"
                " avg_fill_price FLOAT, reason VARCHAR(500), purpose VARCHAR(16), tag VARCHAR(64))"
            )
        )
        con.execute(
            text(
                "INSERT INTO orders VALUES ('r-1', 'r', 'm', 'ES', 'buy', 1, NULL, 1, 'filled',"
                " 1, 1.0, '', 'model', '')"
            )
        )
    engine.dispose()
    with Ledger(url) as ledger:
        assert schema_version(ledger.engine) == SCHEMA_VERSION == 2
        (order,) = ledger.orders("r")
        assert order.tif is TimeInForce.DAY  # what every order before version 2 was
        assert ledger.carried() == []


def test_closing_a_carried_position_outside_hours_is_queued_not_flat(tmp_path):
    """Alpaca queues an order placed while the market is closed for the next open: the
    carried row says so, no session takes it up meanwhile, and a later pass confirms it."""
    key, secret = "fake-key-overnight-1", "overnight-test-secret"
    with (
        AlpacaTestServer(
            key_id=key,
            secret_key=secret,
            fill_price={"AAPL": 135.5},
            allow_short=True,
            is_open=False,
        ) as server,
        Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as ledger,
    ):
        cfg = parse_session_config({"broker": {"kind": "alpaca", "alpaca_url": server.url}})
        account = account_of(cfg, Credentials(key, secret))
        ledger.start_run(
            run_id=RUN,
            session_date="2023-01-11",
            model="buy_close_sell_open",
            params={},
            symbols=["AAPL"],
            feed="iex",
            broker="alpaca",
            account=account,
            status="completed",
            started_ns=CLOSE_NS,
            heartbeat_ns=CLOSE_NS,
        )
        held = CarriedRecord(
            f"{RUN}/AAPL",
            "buy_close_sell_open",
            "alpaca",
            account,
            "AAPL",
            10,
            130.0,
            131.0,
            RUN,
            "2023-01-11",
            CLOSE_NS,
        )
        ledger.write(Batch(carried=[held]), RUN)

        def close(queued_only: bool = False) -> dict[str, int]:
            broker = AlpacaPaperBroker(key, secret, base_url=server.url)
            try:
                return close_carried(
                    ledger, broker, account, by="a test", timeout_s=2.0, queued_only=queued_only
                )
            finally:
                broker.close()

        assert close() == {}
        (row,) = ledger.carried()
        assert row.status is CarryStatus.QUEUED
        assert row.message == f"flatten queued for the next open ({RUN}-uncarry-AAPL), by a test"
        assert ledger.take_carried("buy_close_sell_open", "alpaca", account, "r2", 0) == []
        assert close() == {}  # still queued: not sent again
        assert [o["client_order_id"] for o in server.orders] == [f"{RUN}-uncarry-AAPL"]

        server.open_market()
        assert close(queued_only=True) == {"AAPL": -10}  # as the next session's start does
        (row,) = ledger.carried()
        assert (row.status, row.message) == (CarryStatus.CLOSED, "closed by a test")
        assert [(f.side, f.qty, f.price) for f in ledger.fills(RUN)] == [("sell", 10, 135.5)]
        (order,) = ledger.orders(RUN)
        assert (order.status, order.filled_qty) == (OrderStatus.FILLED, 10)


def test_a_crashed_runs_close_queued_after_hours_is_confirmed_not_resent(tmp_path):
    """Recovery after hours: Alpaca queues its close for the next open. The run is crashed
    with "flatten queued", not STILL OPEN; later passes send nothing and confirm the fill."""
    key, secret = "fake-key-overnight-2", "overnight-test-secret"
    with (
        AlpacaTestServer(
            key_id=key,
            secret_key=secret,
            fill_price={"AAPL": 135.5},
            allow_short=True,
            is_open=False,
        ) as server,
        Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as ledger,
    ):
        cfg = parse_session_config({"broker": {"kind": "alpaca", "alpaca_url": server.url}})
        account = account_of(cfg, Credentials(key, secret))
        crashed_run(ledger, {"close_shares": 10, "max_overnight_position": 0})
        ledger.engine.dispose()
        with ledger.engine.begin() as con:  # the same run, live on this Alpaca account
            con.execute(
                text("UPDATE runs SET broker='alpaca', feed='iex', account=:a WHERE run_id=:r"),
                {"a": account, "r": RUN},
            )

        def broker() -> AlpacaPaperBroker:
            return AlpacaPaperBroker(key, secret, base_url=server.url)

        b = broker()
        try:
            (rec,) = recover(ledger, b, account, by="a test", timeout_s=2.0)
        finally:
            b.close()
        coid = f"{RUN}-recover-AAPL-1"
        assert (rec.closed, rec.queued, rec.left) == ({"AAPL": -15}, {"AAPL": -15}, {})
        run = ledger.run(RUN)
        assert run.status == "crashed" and "flatten queued for the next open: {'AAPL': -15}" in (
            run.message
        )
        assert "STILL OPEN" not in run.message
        (row,) = ledger.carried()
        assert (row.status, row.qty, row.message) == (
            CarryStatus.QUEUED,
            15,
            f"flatten queued for the next open ({coid}), by a test",
        )

        def again(queued_only: bool) -> dict[str, int]:
            b = broker()
            try:
                assert recover(ledger, b, account, by="a test", timeout_s=2.0) == []
                return close_carried(
                    ledger, b, account, by="a test", timeout_s=2.0, queued_only=queued_only
                )
            finally:
                b.close()

        assert again(queued_only=False) == {}  # still queued: nothing sent
        assert [o["client_order_id"] for o in server.orders] == [coid]
        server.open_market()
        assert again(queued_only=True) == {"AAPL": -15}
        assert [o["client_order_id"] for o in server.orders] == [coid]
        (row,) = ledger.carried()
        assert (row.status, row.message) == (CarryStatus.CLOSED, "closed by a test")
        assert [(f.side, f.qty, f.price) for f in ledger.fills(RUN)] == [
            ("buy", 15, 130.0),
            ("sell", 15, 135.5),
        ]
        ((symbol, qty),) = [(p.symbol, p.qty) for p in ledger.positions(RUN)]
        assert (symbol, qty) == ("AAPL", 0)
        assert server.positions == {"AAPL": -15}  # the test server never saw the buy
