"""Cancel through the Prefect API while a served session streams: the flow process flattens
in its own ``finally`` and the run ends Cancelled. Both times are measured and printed."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import PrefectServer, wait_until

from tests.ledger_probe import only_run, start_replay_run


def run_logs(api: httpx.Client, run_id: str) -> list[dict]:
    return api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()


pytestmark = pytest.mark.slow


def test_cancel_via_api_flattens_and_ends_cancelled(
    served: PrefectServer, open_fixture, session_paths
):
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        # 57 s of real prints at real time: the session is surely mid-stream when cancelled
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    with served.api() as api:
        run_id = start_replay_run(api, config)

        cancel_ns = time.time_ns()
        t0 = time.monotonic()
        cancelled = api.post(
            f"/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
        )
        assert cancelled.status_code in (200, 201), cancelled.text

        def final() -> dict | None:
            run = api.get(f"/flow_runs/{run_id}").json()
            return (
                run
                if run["state_type"] in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED")
                else None
            )

        flow_run = wait_until(final, 90, "the run to end after cancel", interval=0.2)
        to_cancelled_s = time.monotonic() - t0
        # the flow process sends its last logs as it exits: wait for the engine's last line
        logs = wait_until(
            lambda: (
                (found := run_logs(api, run_id))
                and any(line["message"] == "Flow run was cancelled." for line in found)
                and found
            ),
            60,
            "the flow run's last log line",
        )
        tasks = {
            t["name"].rsplit("-", 1)[0]: (t["state_type"], t["state_name"])
            for t in api.post(
                "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}
            ).json()
        }
        summaries = api.post(
            "/artifacts/filter",
            json={
                "artifacts": {
                    "flow_run_id": {"any_": [run_id]},
                    "key": {"any_": ["session-summary"]},
                }
            },
        ).json()

    run, fills, positions = only_run(session_paths["ledger_url"])
    to_flat_s = (run.ended_ns - cancel_ns) / 1e9
    print(
        f"\ncancel -> flat (ledger run closed) {to_flat_s:.2f} s; "
        f"cancel -> {flow_run['state_name']} state {to_cancelled_s:.2f} s; "
        f"{len(fills)} fills, {run.counters['ticks']} ticks before the stop"
    )
    assert flow_run["state_type"] == "CANCELLED", flow_run["state"]
    assert [line["message"] for line in logs if line["level"] >= 40] == []
    assert tasks["stream-session"] == ("COMPLETED", "Stopped"), tasks
    (summary,) = summaries
    assert "| Status | cancelled |" in summary["data"], summary["data"]
    assert run.status == "cancelled", (run.status, run.message)
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in positions)
    assert run.counters["ticks"] < 5000  # it really was stopped mid-stream
