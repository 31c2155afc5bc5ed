"""tradeday's automations doing their jobs, on real served deployments and a real server.

- A served session SIGKILLed mid-stream (its flow process killed -9, no state set by the
  test): ``tradeday serve``'s runner sees the process die and marks the run Crashed, the
  crash automation starts ``flatten-now`` with the run's ledger, and that closes what the
  killed session held.
- A kill-switch session's event reaches a real HTTP receiver on 127.0.0.1 through
  Prefect's ``CustomWebhookNotificationBlock``, chosen by ``TRADEDAY_NOTIFY_BLOCK``, with
  the deployment, model, account, run and reason in the message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import BIN, PrefectServer, wait_until

from deployments.automations import (
    ALERT,
    CRASHED_FLATTEN,
    LATE,
    NOTIFY_BLOCK_ENV,
)
from tradeday.ledger import Ledger

# the shared server and serve start inside the first test's bound: generous, for a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
DAY = "2013-09-03"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
SAVE_BLOCK = """
import sys
from prefect.blocks.notifications import CustomWebhookNotificationBlock

block = CustomWebhookNotificationBlock(
    name="receiver", url=sys.argv[1], json_data={"subject": "{{subject}}", "text": "{{body}}"}
)
print(block.save("tradeday-test-alerts", overwrite=True))
"""


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint of one's own: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def bodies(self) -> list[dict]:
        with self.lock:
            return list(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.received.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def _automations(api) -> dict[str, dict]:
    return {a["name"]: a for a in api.post("/automations/filter", json={}).json()}


def _start_replay(api, config: dict) -> str:
    dep = api.get("/deployments/name/trading-session/replay-day").json()
    created = api.post(
        f"/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"config": config, "session_date": DAY}},
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _final(api, flow_run_id: str, timeout: float = 240.0) -> dict:
    def final() -> dict | None:
        run = api.get(f"/flow_runs/{flow_run_id}").json()
        return run if run["state_type"] in FINAL else None

    return wait_until(final, timeout, f"flow run {flow_run_id} to finish")


def test_a_sigkilled_session_crashes_and_the_automation_flattens_it(
    served: PrefectServer, open_fixture, session_paths
):
    # buys only (every even size), so the book is long from the first fill until flattened
    model = {"name": "volume_modulo", "buy_modulus": 2, "sell_modulus": 1_000_003, "quantity": 1}
    config = {
        "model": model,
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 1.0},  # ~57 s: killed mid-stream
        **session_paths,
    }
    ledger = Ledger(session_paths["ledger_url"])
    try:
        with served.api() as api:
            crash = _automations(api)[CRASHED_FLATTEN]
            flatten_now = api.get("/deployments/name/flatten-now/flatten-now").json()
            (action,) = crash["actions"]
            assert action["type"] == "run-deployment"
            assert action["deployment_id"] == flatten_now["id"]
            assert crash["trigger"]["expect"] == ["prefect.flow-run.Crashed"]

            flow_run_id = _start_replay(api, config)

            def long_run():
                runs = ledger.runs()
                held = runs and any(p.qty > 0 for p in ledger.positions(runs[0].run_id))
                return runs[0] if held else None

            run = wait_until(long_run, 180, "a long position in the ledger")
            os.kill(run.pid, signal.SIGKILL)  # the flow process: no finally, no flatten
            crashed = _final(api, flow_run_id)
            left = {p.symbol: p.qty for p in ledger.positions(run.run_id) if p.qty}

            def automation_run() -> dict | None:
                runs = api.post(
                    "/flow_runs/filter",
                    json={"flow_runs": {"deployment_id": {"any_": [flatten_now["id"]]}}},
                ).json()
                mine = [
                    r
                    for r in runs
                    if r["parameters"].get("ledger_url") == config["ledger_url"]
                    and r["state_type"] in FINAL
                ]
                return mine[0] if mine else None

            flattened = wait_until(automation_run, 240, "flatten-now started by the automation")
        after = ledger.run(run.run_id)
        positions = ledger.positions(run.run_id)
        recovery = [o for o in ledger.orders(run.run_id) if o.purpose == "recovery"]
        fills = ledger.fills(run.run_id)
    finally:
        ledger.close()
    print(f"\nSIGKILL: {crashed['state']['message']!r}; flatten-now closed {left}")
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    assert left and left["ES"] > 0
    assert flattened["state_type"] == "COMPLETED", flattened["state"]
    assert flattened["parameters"]["report_path"] == config["report_path"]
    assert flattened["parameters"]["broker"] == {}  # the crashed run's default: simulated
    assert after is not None and after.status == "crashed"
    assert "recovered by flatten-now" in after.message
    assert [(o.symbol, o.side, o.qty, o.status) for o in recovery] == [
        ("ES", "sell", left["ES"], "filled")
    ]
    assert all(p.qty == 0 for p in positions)
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0  # the account is flat


def test_a_kill_switch_notifies_a_real_receiver_through_the_named_block(
    served: PrefectServer, receiver: Receiver, open_fixture, session_paths
):
    """The automations through ``tradeday automations`` in its own process, as the
    work-pool recipe runs it (an in-process Prefect client here would keep this server for
    later tests' events); twice: replaced by name, not duplicated."""
    env = {**served.env, NOTIFY_BLOCK_ENV: "custom-webhook/tradeday-test-alerts"}
    saved = subprocess.run(
        [sys.executable, "-c", SAVE_BLOCK, receiver.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    block_id = saved.stdout.strip()
    for _ in range(2):
        done = subprocess.run(
            [str(BIN / "tradeday"), "automations"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    names = [line.removeprefix("automation: ") for line in done.stdout.splitlines()]
    assert names == [CRASHED_FLATTEN, ALERT, LATE]
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture)},
        "risk": {"max_daily_loss": 5.0, "max_position": 5},  # trips on the open's prints
        **session_paths,
    }
    try:
        with served.api() as api:
            found = [
                a for a in api.post("/automations/filter", json={}).json() if a["name"] in names
            ]
            by_name = {a["name"]: a for a in found}
            assert sorted(a["name"] for a in found) == sorted(names)
            for name in (ALERT, LATE):
                (action,) = by_name[name]["actions"]
                assert action["type"] == "send-notification"
                assert action["block_document_id"] == block_id
            assert set(by_name[ALERT]["trigger"]["expect"]) == {
                "tradeday.session.kill-switch",
                "tradeday.session.not-flat",
                "tradeday.recovery.failed",
            }
            assert by_name[LATE]["trigger"]["posture"] == "Proactive"

            session = _final(api, _start_replay(api, config))
            with Ledger(session_paths["ledger_url"]) as ledger:
                (run,) = ledger.runs()

            def mine() -> list[dict]:
                return [b for b in receiver.bodies() if run.run_id in b["text"]]

            (note,) = wait_until(mine, 120, "the kill-switch notification at the receiver")
    finally:  # later tests' kill switches have no receiver: leave only serve's automation
        with served.api() as api:
            for name in (ALERT, LATE):
                for automation in [a for a in _automations(api).values() if a["name"] == name]:
                    api.delete(f"/automations/{automation['id']}")
    reason = run.message.removeprefix("ended at kill switch: ")
    assert session["state_type"] == "COMPLETED"  # the kill switch flattened: a clean end
    assert reason.startswith("max_daily_loss"), run.message
    assert note == {
        "subject": "tradeday.session.kill-switch: replay-day volume_modulo",
        "text": (
            "tradeday.session.kill-switch: deployment replay-day, model volume_modulo, "
            f"account simulated, run {run.run_id}. Reason: {reason}"
        ),
    }
