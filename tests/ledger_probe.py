"""Peek at a ledger another process is writing, for tests that stop a running session."""

from __future__ import annotations

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
