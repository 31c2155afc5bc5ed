"""The ledger never loses a row: a real second process locks the real SQLite ledger file,
and a real PostgreSQL server is stopped and restarted with pg_ctl, under real sessions.

The durable writer keeps refused batches in order and retries them; at shutdown it
journals what the ledger still refuses, and a replay writes the journal exactly once.
In the writer's own tests its clock is the test's (a counter it advances), so retries
happen when the test says; the lock is a real ``BEGIN EXCLUSIVE`` in another process.
The session tests run ``tradeday run`` in its own process on a replay at its recorded
pace (about a minute) and hold the fault while it trades; afterwards the ledger must
hold exactly the orders and fills the engine counted, the backtest's fills, a final run
status and flat positions.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PostgresCluster, wait_until
from ledger_probe import session_process, sqlite_locked

from flows.maintenance import flatten_now
from tradeday import backtest
from tradeday.config import BrokerConfig
from tradeday.events import Side
from tradeday.journal import Journal, JournalError, journal_dir, replay_journal
from tradeday.ledger import Ledger
from tradeday.ledger_writer import DurableWriter
from tradeday.records import (
    Batch,
    FillRecord,
    MarkRecord,
    OrderRecord,
    OrderStatus,
    PositionRecord,
    RunUpdate,
)

RUN = "td-20130903-0utage00"
TS = 1_378_215_000_000_000_000


class Clock:
    """The writer's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trade(n: int) -> Batch:
    """The n-th flush: one filled order, its fill, the position and a minute mark."""
    coid = f"{RUN}-{n}"
    ts = TS + n * 60 * 10**9
    return Batch(
        new_orders=[
            OrderRecord(
                coid,
                RUN,
                "m",
                "ES",
                Side.BUY,
                1,
                ts,
                OrderStatus.FILLED,
                filled_qty=1,
                avg_fill_price=100.0 + n,
            )
        ],
        fills=[FillRecord(RUN, "m", coid, "ES", Side.BUY, 1, 100.0 + n, 0.0, ts)],
        positions=[PositionRecord(RUN, "ES", "m", n, 100.0, 100.0 + n, 0.0, 0.0, ts)],
        marks=[MarkRecord(RUN, "ES", ts, 100.0 + n)],
        run_update=RunUpdate(heartbeat_ns=ts, counters={"fills": n}),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(db: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{db}") as led:
        led.start_run(
            run_id=RUN,
            session_date="2013-09-03",
            model="m",
            params={},
            symbols=["ES"],
            feed="replay",
            broker="simulated",
            started_ns=time.time_ns(),
            heartbeat_ns=time.time_ns(),
        )
        yield led


def held(ledger: Ledger) -> tuple[list[str], list[float], list[int], int]:
    """(order ids, fill prices, position qty, mark count) the ledger holds for the run."""
    return (
        [o.client_order_id for o in ledger.orders(RUN)],
        [f.price for f in ledger.fills(RUN)],
        [p.qty for p in ledger.positions(RUN)],
        len(ledger.marks(RUN)),
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tradeday.test"]


def test_writes_refused_by_a_locked_ledger_land_in_order_once_it_is_free(
    ledger, db, tmp_path, caplog
):
    caplog.set_level(logging.INFO, "tradeday.test")
    clock = Clock()
    writer = DurableWriter(
        ledger, RUN, Journal(tmp_path / "j"), logger=logging.getLogger("tradeday.test"), clock=clock
    )
    writer.write(trade(1))
    assert writer.written == 1
    with sqlite_locked(db):
        writer.write(trade(2))  # refused: SQLite says the database is locked
        assert (len(writer.pending), writer.outage_seconds()) == (1, 0.0)
        clock.now += 0.1
        writer.write(trade(3))  # the retry is not due yet: queued without a try
        assert len(writer.pending) == 2
        clock.now += 1.0
        writer.write(trade(4))  # due, refused again; the backoff doubles
        assert (len(writer.pending), writer.outage_seconds()) == (3, pytest.approx(1.1))
    assert held(ledger) == ([f"{RUN}-1"], [101.0], [1], 1)  # nothing of the outage yet
    clock.now += 2.0
    writer.write(trade(5))
    assert (len(writer.pending), writer.written, writer.outage_seconds()) == (0, 5, 0.0)
    assert held(ledger) == (
        [f"{RUN}-{n}" for n in range(1, 6)],
        [101.0, 102.0, 103.0, 104.0, 105.0],
        [5],
        5,
    )
    assert ledger.run(RUN).counters == {"fills": 5}
    logged = messages(caplog)
    assert [level for level, _ in logged] == [logging.WARNING, logging.WARNING]
    assert logged[0][1].startswith("ledger write failed (OperationalError: ")
    assert "database is locked" in logged[0][1]
    assert logged[1][1] == (
        "ledger reachable again after 3 s: the 4 queued batches (16 rows) are written"
    )


def test_unwritten_rows_go_to_the_journal_at_shutdown_and_are_replayed_exactly_once(
    ledger, db, caplog
):
    caplog.set_level(logging.INFO, "tradeday.test")
    journal = Journal.for_ledger(ledger.url)
    assert journal.directory == db.with_name("ledger.sqlite.rows-journal")
    writer = DurableWriter(ledger, RUN, journal, logger=logging.getLogger("tradeday.test"))
    writer.write(trade(1))
    with sqlite_locked(db):
        writer.write(trade(2))
        writer.write(trade(3))
        landed = writer.finish(
            "completed", "ended at close", TS + 10**12, {"fills": 3}, timeout_s=0
        )
        assert landed is False
    assert (len(writer.pending), writer.journaled) == (0, 3)  # two flushes and the final status
    (path,) = journal.pending()
    assert path.name == f"{RUN}.jsonl"
    assert len(path.read_text().splitlines()) == 3
    assert messages(caplog)[-1][1].startswith(
        "ledger still unreachable at shutdown: 3 batches (8 rows) and the run's final status "
        f"are in the journal {path}"
    )
    assert held(ledger) == ([f"{RUN}-1"], [101.0], [1], 1)
    assert ledger.run(RUN).status == "running"

    assert replay_journal(ledger) == 3
    assert held(ledger) == ([f"{RUN}-1", f"{RUN}-2", f"{RUN}-3"], [101.0, 102.0, 103.0], [3], 3)
    run = ledger.run(RUN)
    assert (run.status, run.message, run.counters) == ("completed", "ended at close", {"fills": 3})
    assert journal.pending() == []
    assert replay_journal(ledger) == 0  # nothing left to replay, nothing doubled
    assert held(ledger)[1] == [101.0, 102.0, 103.0]


def test_a_replay_cut_short_is_finished_by_the_next_without_doubling(ledger, tmp_path):
    journal = Journal(tmp_path / "j")
    batches = [trade(n) for n in (1, 2, 3)]
    for n, batch in enumerate(batches, 1):
        batch.batch_id = f"{RUN}/{n}"
    path = journal.append(RUN, batches)
    assert ledger.write(batches[0], RUN)  # the first replay died after its first batch
    assert not ledger.write(batches[0], RUN)  # the ledger knows that batch by its id

    assert journal.replay(ledger) == 2
    assert held(ledger)[0] == [f"{RUN}-1", f"{RUN}-2", f"{RUN}-3"]
    assert not path.exists()


def test_an_unreadable_journal_line_is_kept_for_a_person_with_what_to_do(ledger, tmp_path):
    journal = Journal(tmp_path / "j")
    batch = trade(1)
    batch.batch_id = f"{RUN}/1"
    path = journal.append(RUN, [batch])
    with path.open("a") as f:
        f.write('{"run_id": "td-')  # a crash in the middle of an append
    with pytest.raises(JournalError, match=r"line 2 is unreadable .* run flatten-now"):
        journal.replay(ledger)
    assert held(ledger)[0] == []  # nothing half replayed
    assert path.with_suffix(".jsonl.unreadable").exists()


def test_a_server_ledger_journals_under_data():
    url = "postgresql+psycopg://tradeday:secret@db.example:5433/ledger"
    assert journal_dir(url) == Path("data/ledger-journal/db.example-5433-ledger")


# -- real sessions --------------------------------------------------------------------------

DAY = date(2013, 9, 3)
LANDED = re.compile(r"ledger reachable again after \d+ s: the (\d+) queued batches \((\d+) rows\)")


def busy_replay(open_fixture: Path, ledger_url: str, tmp_path: Path, speed: float) -> dict:
    """Orders on about half the prints, streamed at ``speed`` times the recorded pace."""
    return {
        "model": {"name": "volume_modulo", "sell_modulus": 2, "buy_modulus": 3, "quantity": 1},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": speed},
        "risk": {"max_orders_per_minute": 100_000},
        "ledger_url": ledger_url,
        "report_path": str(tmp_path / "reports.duckdb"),
    }


def session_env(tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    # the harness's API: no temporary Prefect server is started, so none can be orphaned
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path)}


def assert_complete(ledger_url: str, raw: dict[str, Any], open_fixture: Path) -> None:
    """The ledger holds the run exactly: the engine's counts, the backtest's fills, flat."""
    with Ledger(ledger_url) as ledger:
        (run,) = ledger.runs()
        orders, fills = ledger.orders(run.run_id), ledger.fills(run.run_id)
        positions = ledger.positions(run.run_id)
    expected = backtest.run(raw["model"], DAY, ["ES"], recording=open_fixture, risk=raw["risk"])
    assert run.status == "completed", run.message
    assert (len(orders), len(fills)) == (run.counters["orders"], run.counters["fills"])
    assert (len(orders), len(fills)) == (len(expected.orders), len(expected.fills))
    assert [(f.side, f.qty, f.price, f.ts) for f in fills] == [
        (f.side, f.qty, f.price, f.ts) for f in expected.fills
    ]
    assert [p.qty for p in positions] == [0]
    assert len({o.client_order_id for o in orders}) == len(orders)


def assert_traded_through_one_outage(log: str) -> None:
    """One warning when it started, one line when the rows landed, rows made meanwhile."""
    assert log.count("ledger write failed") == 1, log[-3000:]
    ((batches, rows),) = LANDED.findall(log)
    assert int(batches) > 1 and int(rows) > 0


@pytest.mark.slow
def test_a_session_trades_through_a_20_s_sqlite_lock_and_its_ledger_ends_complete(
    prefect_harness, tmp_path, open_fixture
):
    db = tmp_path / "ledger.sqlite"
    raw = busy_replay(open_fixture, f"sqlite:///{db}", tmp_path, speed=1.0)
    with session_process(raw, tmp_path, session_env(tmp_path), fills=5, timeout=180) as (proc, log):
        with sqlite_locked(db):
            wait_until(lambda: "ledger write failed" in log.read_text(), 60, "a refused write")
            time.sleep(20)  # the outage, while the session goes on trading
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert_traded_through_one_outage(log.read_text())
    assert_complete(raw["ledger_url"], raw, open_fixture)
    assert Journal.for_ledger(raw["ledger_url"]).pending() == []


@pytest.mark.slow
def test_a_ledger_locked_through_shutdown_is_journaled_then_replayed_once_by_flatten_now(
    prefect_harness, tmp_path, open_fixture
):
    db = tmp_path / "ledger.sqlite"
    raw = busy_replay(open_fixture, f"sqlite:///{db}", tmp_path, speed=4.0)
    journal = Journal.for_ledger(raw["ledger_url"])
    env = session_env(tmp_path)
    with (
        session_process(raw, tmp_path, env, fills=5, timeout=180) as (proc, log),
        sqlite_locked(db),
    ):
        wait_until(lambda: proc.poll() is not None, 180, "the session to end")
        # the end-of-day report cannot read a locked ledger either: that is not tested here
    assert "ledger still unreachable at shutdown" in log.read_text(), log.read_text()[-3000:]
    (path,) = journal.pending()
    with Ledger(raw["ledger_url"]) as ledger:
        (run,) = ledger.runs()
        assert run.status == "running"  # its final status is in the journal

    broker = BrokerConfig()
    flatten_now(broker=broker, ledger_url=raw["ledger_url"], report_path=raw["report_path"])
    assert not path.exists()
    assert_complete(raw["ledger_url"], raw, open_fixture)
    flatten_now(broker=broker, ledger_url=raw["ledger_url"], report_path=raw["report_path"])
    assert_complete(raw["ledger_url"], raw, open_fixture)  # replayed once, nothing doubled


@pytest.fixture
def pg_ledger_url(postgres_cluster: PostgresCluster) -> str:
    """A database of its own in the shared cluster."""
    name = f"outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_cluster.url.replace("+psycopg", ""), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_cluster.url.rsplit('/', 1)[0]}/{name}"


@pytest.mark.slow
def test_a_session_trades_through_a_postgresql_stop_and_restart(
    prefect_harness, postgres_cluster, pg_ledger_url, tmp_path, open_fixture
):
    raw = busy_replay(open_fixture, pg_ledger_url, tmp_path, speed=1.0)
    with session_process(raw, tmp_path, session_env(tmp_path), fills=5, timeout=180) as (proc, log):
        postgres_cluster.stop()
        try:
            wait_until(lambda: "ledger write failed" in log.read_text(), 60, "a refused write")
            time.sleep(10)  # the outage, while the session goes on trading
        finally:
            postgres_cluster.start()
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert_traded_through_one_outage(log.read_text())
    assert_complete(pg_ledger_url, raw, open_fixture)
