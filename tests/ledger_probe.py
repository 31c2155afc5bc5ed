"""Peek at a ledger another process is writing, or lock it, for tests that disturb a session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import wait_until
from sqlalchemy import create_engine, text

from tradeday.ledger import Ledger


def fill_count(url: str) -> int:
    """Fills in the ledger so far; 0 until the session has created its tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(text("SELECT count(*) FROM fills")).scalar_one()
    except Exception:  # tables not created yet
        return 0
    finally:
        engine.dispose()


def start_replay_run(api: httpx.Client, config: dict[str, Any]) -> str:
    """A served ``replay-day`` run of ``config``, once it has fills; its flow run id."""
    dep = api.get("/deployments/name/trading-session/replay-day").json()
    created = api.post(
        f"/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"config": config, "session_date": "2013-09-03"}},
    )
    assert created.status_code == 201, created.text
    wait_until(lambda: fill_count(config["ledger_url"]) >= 3, 180, "the first fills")
    return created.json()["id"]


def only_run(url: str) -> tuple[Any, list[Any], list[Any]]:
    """The ledger's one run, its fills and its positions."""
    ledger = Ledger(url)
    try:
        (run,) = ledger.runs()
        return run, ledger.fills(run.run_id), ledger.positions(run.run_id)
    finally:
        ledger.close()


@contextmanager
def session_process(
    config: dict[str, Any], tmp_path: Path, env: dict[str, str], *, fills: int, timeout: float
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``tradeday run`` on ``config`` in its own process, yielded once it has ``fills``
    fills; killed on the way out if the test left it running. Yields it and its log."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "session.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradeday.cli",
            "run",
            "--config",
            str(path),
            "--date",
            "2013-09-03",
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while fill_count(config["ledger_url"]) < fills:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the session never started filling"
            time.sleep(0.2)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
"""


@contextmanager
def sqlite_locked(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``BEGIN EXCLUSIVE`` on the SQLite file until the block ends.

    No other connection can read or write it meanwhile (SQLite's rollback journal mode):
    what a user's ``sqlite3`` shell in a transaction, or a backup tool, does to a ledger.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the locker commits and exits
        proc.wait(timeout=30)
