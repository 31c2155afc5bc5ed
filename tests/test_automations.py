"""tradeday serve creates the automations; a crashed session run makes flatten-now run.

Real served deployments on a real Prefect server. The crashed run is a trading-session
flow run whose state the test sets to Crashed through the API (the server emits the same
``prefect.flow-run.Crashed`` event it emits for a SIGKILLed session).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import BIN, PrefectServer, wait_until

from deployments.automations import (
    ALERT,
    CRASHED_FLATTEN,
    LATE,
    NOTIFY_BLOCK_ENV,
)

pytestmark = pytest.mark.slow
SAVE_BLOCK = """
from prefect.blocks.notifications import CustomWebhookNotificationBlock

block = CustomWebhookNotificationBlock(
    name="receiver", url="http://127.0.0.1:9/alerts", json_data={"text": "{{body}}"}
)
print(block.save("tradeday-test-alerts", overwrite=True))
"""


def _automations(api) -> dict[str, dict]:
    return {a["name"]: a for a in api.post("/automations/filter", json={}).json()}


def test_serve_creates_the_crash_automation_and_a_crash_runs_flatten_now(
    served: PrefectServer, session_paths
):
    with served.api() as api:
        crash = _automations(api)[CRASHED_FLATTEN]
        flatten_now = api.get("/deployments/name/flatten-now/flatten-now").json()
        (action,) = crash["actions"]
        assert action["type"] == "run-deployment" and action["deployment_id"] == flatten_now["id"]
        assert crash["trigger"]["expect"] == ["prefect.flow-run.Crashed"]

        flow = api.get("/flows/name/trading-session").json()
        config = {
            "ledger_url": session_paths["ledger_url"],
            "report_path": session_paths["report_path"],
        }
        crashed = api.post(
            "/flow_runs/",
            json={
                "flow_id": flow["id"],
                "name": "crashed-by-test",
                "parameters": {"config": config},
            },
        ).json()
        for state in ("RUNNING", "CRASHED"):
            reply = api.post(
                f"/flow_runs/{crashed['id']}/set_state",
                json={"state": {"type": state}, "force": True},
            )
            assert reply.status_code in (200, 201), reply.text

        def flatten_run() -> dict | None:
            runs = api.post(
                "/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [flatten_now["id"]]}}},
            ).json()
            mine = [r for r in runs if r["parameters"].get("ledger_url") == config["ledger_url"]]
            return (
                mine[0]
                if mine and mine[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
                else None
            )

        run = wait_until(flatten_run, 180, "flatten-now started by the automation")
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["report_path"] == config["report_path"]
    assert run["parameters"]["broker"] == {}  # the crashed run's default broker: simulated


def test_alert_automations_use_the_named_notification_block(served: PrefectServer):
    """Through ``tradeday automations`` in its own process, as the work-pool recipe runs it
    (an in-process Prefect client here would keep this server for later tests' events)."""
    env = {**served.env, NOTIFY_BLOCK_ENV: "custom-webhook/tradeday-test-alerts"}
    saved = subprocess.run(
        [sys.executable, "-c", SAVE_BLOCK], env=env, capture_output=True, text=True, timeout=120
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    block_id = saved.stdout.strip()
    for _ in range(2):  # again: replaced by name, not duplicated
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
    with served.api() as api:
        found = [a for a in api.post("/automations/filter", json={}).json() if a["name"] in names]
    assert sorted(a["name"] for a in found) == sorted(names)
    by_name = {a["name"]: a for a in found}
    for name in (ALERT, LATE):
        (action,) = by_name[name]["actions"]
        assert action["type"] == "send-notification"
        assert action["block_document_id"] == str(block_id)
    assert set(by_name[ALERT]["trigger"]["expect"]) == {
        "tradeday.session.kill-switch",
        "tradeday.session.not-flat",
        "tradeday.recovery.failed",
    }
    assert by_name[LATE]["trigger"]["posture"] == "Proactive"
