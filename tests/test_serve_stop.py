"""Stopping ``tradeday serve`` (SIGTERM, as systemd or a terminal's Ctrl-C does) while a
session streams: the session flattens, the run ends Cancelled, and no deployment is paused.

The serve process here has a Prefect server of its own: the session-wide ``served``
fixture serves the same deployment names, and two runners would race for the run.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import run_tradeday_serve, wait_until

from deployments import runner_deployments
from tests.ledger_probe import only_run, start_replay_run

pytestmark = pytest.mark.slow


def test_stopping_serve_mid_run_flattens_and_pauses_nothing(
    start_prefect_server, tmp_path, open_fixture, session_paths
):
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        # 57 s of real prints at real time: the session is surely mid-stream when stopped
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    with (
        start_prefect_server(tmp_path / "prefect") as server,
        run_tradeday_serve(server, serve_dir) as serve,
        server.api() as api,
    ):
        run_id = start_replay_run(api, config)

        t0 = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        exit_code = serve.wait(90)
        serve_exit_s = time.monotonic() - t0

        def final() -> dict | None:
            run = api.get(f"/flow_runs/{run_id}").json()
            return run if run["state_type"] not in ("PENDING", "RUNNING", "CANCELLING") else None

        flow_run = wait_until(final, 60, "the run to end after serve stopped", interval=0.2)
        deployments = api.post("/deployments/filter", json={}).json()

    run, fills, positions = only_run(session_paths["ledger_url"])
    print(
        f"\nserve exited {exit_code} in {serve_exit_s:.1f} s; run {flow_run['state_name']}; "
        f"{len(fills)} fills, {run.counters['ticks']} ticks before the stop"
    )
    assert flow_run["state_type"] == "CANCELLED", flow_run["state"]
    assert run.status == "cancelled", (run.status, run.message)
    assert run.counters["ticks"] < 5000  # it really was stopped mid-stream
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in positions)
    assert len(deployments) == len(runner_deployments())  # every one in prefect.yaml
    assert [d["name"] for d in deployments if d["paused"]] == []
