"""Recovery as Prefect sees it: ``flatten-now`` (a real in-process flow run on the test
harness's API) emits ``tradeday.recovery.performed`` for each crashed run it closes, or
``tradeday.recovery.failed`` for the account when it cannot; it ends the crashed run's
flow run Crashed, and gives finished runs whose flow run the API never heard end the
ledger's state (``reconcile_flow_runs``). Real SQLite ledgers; the failed recovery talks
to the project's Alpaca test server over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from prefect.settings import PREFECT_API_URL

from flows.maintenance import flatten_now
from tasks.events import RECOVERY, RECOVERY_FAILED
from tests.alpaca_server import AlpacaTestServer
from tests.test_recovery import (
    RUN,
    dead_pid,
    fill_row,
    order_row,
    position_row,
    start_crashed_run,
)
from tradeday.config import BrokerConfig, SessionConfig
from tradeday.ledger import Ledger
from tradeday.records import Batch
from tradeday.wiring import Credentials, account_of

pytestmark = pytest.mark.usefixtures("prefect_harness")
DAY_NS = 86_400 * 10**9


@pytest.fixture
def api() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=PREFECT_API_URL.value(), timeout=30.0) as client:
        yield client


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    return {
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "report_path": str(tmp_path / "reports.duckdb"),
    }


def flow_run_in(api: httpx.Client, state: str) -> str:
    """A flow run of a stand-in flow, put in ``state`` (as a session's would be)."""
    flow = api.post("/flows/", json={"name": "stand-in-session"}).json()
    run = api.post("/flow_runs/", json={"flow_id": flow["id"], "name": "stand-in"}).json()
    reply = api.post(
        f"/flow_runs/{run['id']}/set_state", json={"state": {"type": state}, "force": True}
    )
    assert reply.status_code in (200, 201), reply.text
    return run["id"]


def state_of(api: httpx.Client, flow_run_id: str) -> tuple[str, str]:
    run = api.get(f"/flow_runs/{flow_run_id}").json()
    return run["state_type"], run["state"]["message"] or ""


def events(api: httpx.Client, name: str, resource_id: str) -> list[dict]:
    body = {
        "filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}},
        "limit": 50,
    }
    return api.post("/events/filter", json=body).json()["events"]


def start_run(ledger: Ledger, run_id: str, flow_run_id: str, deployment: str) -> None:
    """A simulated run of a process that is gone, with its flow run and deployment."""
    ledger.start_run(
        run_id=run_id,
        session_date="2013-09-03",
        model="volume_modulo",
        params={},
        symbols=["ES"],
        feed="replay",
        broker="simulated",
        account="simulated",
        started_ns=time.time_ns() - 60 * 10**9,
        heartbeat_ns=time.time_ns(),
        pid=dead_pid(),
        flow_run_id=flow_run_id,
        deployment=deployment,
    )


def finished_run(ledger: Ledger, run_id: str, status: str, flow_run_id: str, age_ns: int) -> None:
    start_run(ledger, run_id, flow_run_id, "replay-day")
    ledger.set_status([run_id], status, f"{status} by the test", time.time_ns() - age_ns)


def test_flatten_now_emits_recovery_performed_and_reconciles_flow_runs(api, paths):
    crashed_fr = flow_run_in(api, "RUNNING")  # the killed session's run, left Running
    ledger = Ledger(paths["ledger_url"])
    try:
        start_run(ledger, RUN, crashed_fr, "daily-session")
        batch = Batch(
            new_orders=[order_row(RUN, 1, "buy", 10, "filled", 10, 100.0)],
            fills=[fill_row(RUN, 1, "buy", 10, 100.0)],
            positions=[position_row(RUN, 10, 102.0)],
        )
        ledger.write(batch, RUN)
        # ended while the API was down: the ledger knows, the flow run still says Running
        late = {s: flow_run_in(api, "RUNNING") for s in ("completed", "failed", "cancelled")}
        for status, fr in late.items():
            finished_run(ledger, f"td-20130903-{status}", status, fr, age_ns=DAY_NS)
        old = flow_run_in(api, "RUNNING")  # ended 4 days ago: outside the 3-day window
        finished_run(ledger, "td-20130830-old", "completed", old, age_ns=4 * DAY_NS)
        settled = flow_run_in(api, "CANCELLED")  # a state set meanwhile stands
        finished_run(ledger, "td-20130903-settled", "completed", settled, age_ns=DAY_NS)

        result = flatten_now(**paths)

        after = ledger.run(RUN)
        positions = ledger.positions(RUN)
    finally:
        ledger.close()
    assert result["recovered"] == [{"run_id": RUN, "closed": {"ES": -10}, "fills": 1}]
    assert after is not None and after.status == "crashed" and all(p.qty == 0 for p in positions)
    assert state_of(api, crashed_fr) == ("CRASHED", after.message)
    assert {s: state_of(api, fr) for s, fr in late.items()} == {
        "completed": ("COMPLETED", "completed by the test"),
        "failed": ("FAILED", "failed by the test"),
        "cancelled": ("CANCELLED", "cancelled by the test"),
    }
    assert state_of(api, old)[0] == "RUNNING"
    assert state_of(api, settled)[0] == "CANCELLED"

    (event,) = wait_until(
        lambda: events(api, RECOVERY, f"tradeday.session.{RUN}"), 60, "the recovery event"
    )
    labels = {k: v for k, v in event["resource"].items() if k.startswith("tradeday.")}
    assert labels == {
        "tradeday.deployment": "daily-session",
        "tradeday.model": "volume_modulo",
        "tradeday.account": "simulated",
    }
    assert event["payload"] == {
        "by": "flatten-now",
        "closed": {"ES": -10},
        "fills": 1,
        "left": {},
    }


def test_a_recovery_that_cannot_reach_the_account_emits_recovery_failed(api, paths, monkeypatch):
    """The keys are refused (401): nothing is closed, the run stays to be recovered, and
    the account's ``tradeday.recovery.failed`` event says why."""
    key, secret = "fake-key-recovery-2", "not-the-servers-secret"
    monkeypatch.setenv("APCA_API_KEY_ID", key)
    monkeypatch.setenv("APCA_API_SECRET_KEY", secret)
    with AlpacaTestServer(key_id=key, secret_key="the-servers-secret") as server:
        broker = BrokerConfig(kind="alpaca", alpaca_url=server.url)
        account = account_of(SessionConfig(broker=broker), Credentials(key, secret))
        ledger = Ledger(paths["ledger_url"])
        try:
            start_crashed_run(ledger, RUN, "alpaca", account, dead_pid())
            state = flatten_now(broker=broker, **paths, return_state=True)
            left = ledger.run(RUN)
        finally:
            ledger.close()
        assert not [o for o in server.orders]  # nothing was sent
    assert state.is_failed(), state
    assert left is not None and left.status == "running"  # still to be recovered

    (event,) = wait_until(
        lambda: events(api, RECOVERY_FAILED, f"tradeday.account.{account}"),
        60,
        "the failed-recovery event",
    )
    assert event["resource"]["tradeday.account"] == account
    assert event["payload"]["by"] == "flatten-now"
    assert "refused the keys (401" in event["payload"]["reason"], event["payload"]
