"""Edits that last: a parameter edit or a pause made through the API (what the UI's "Edit"
and pause toggle send) survives a ``tradeday serve`` restart while the deployment's
prefect.yaml entry is unchanged, and the server's scheduler gives the next scheduled run
the edit; once the entry changes, prefect.yaml wins. A real server and real serve processes,
serving a copy of prefect.yaml that the test changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ROOT, run_tradeday_serve, wait_until

from deployments import APPLIED_VARIABLE, definitions, fingerprint

pytestmark = pytest.mark.slow

EDITED = {"config": {"symbols": ["QQQ"], "model": {"name": "moody_trader", "lot_size": 7}}}


def deployment(api: httpx.Client, name: str) -> dict:
    return api.get(f"/deployments/name/trading-session/{name}").json()


def next_scheduled_parameters(api: httpx.Client, deployment_id: str) -> dict:
    """The parameters of the deployment's earliest run the server's scheduler created."""

    def scheduled() -> list[dict]:
        query = {
            "flow_runs": {
                "deployment_id": {"any_": [deployment_id]},
                "state": {"type": {"any_": ["SCHEDULED"]}},
            },
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 5,
        }
        found = api.post("/flow_runs/filter", json=query)
        assert found.status_code == 200, found.text
        return [run for run in found.json() if run["auto_scheduled"]]

    return wait_until(scheduled, 120, "the scheduler's next daily-session run")[0]["parameters"]


def switch_schedule(api: httpx.Client, dep: dict, active: bool) -> None:
    """The deployment's one schedule on or off, as the UI's schedule switch does."""
    (schedule,) = dep["schedules"]
    switched = api.patch(
        f"/deployments/{dep['id']}/schedules/{schedule['id']}", json={"active": active}
    )
    assert switched.status_code == 204, switched.text


def test_edits_survive_a_serve_restart_until_prefect_yaml_changes(
    start_prefect_server, tmp_path: Path
):
    spec = tmp_path / "prefect.yaml"
    shutil.copy(ROOT / "prefect.yaml", spec)
    (daily,) = [d for d in definitions(spec) if d["name"] == "daily-session"]
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    with (
        start_prefect_server(
            tmp_path / "prefect", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2"
        ) as server,
        server.api() as api,
    ):
        with run_tradeday_serve(server, serve_dir, "--prefect-yaml", str(spec)):
            dep = deployment(api, "daily-session")
            assert dep["parameters"] == daily["parameters"]
            replay = deployment(api, "replay-day")
            edit = api.patch(f"/deployments/{dep['id']}", json={"parameters": EDITED})
            assert edit.status_code == 204, edit.text
            switch_schedule(api, dep, active=False)
            paused = api.patch(f"/deployments/{replay['id']}", json={"paused": True})
            assert paused.status_code == 204, paused.text
        applied = api.get(f"/variables/name/{APPLIED_VARIABLE}").json()["value"]
        assert applied == {d["name"]: fingerprint(d) for d in definitions(spec)}

        with run_tradeday_serve(server, serve_dir, "--prefect-yaml", str(spec)):
            kept = deployment(api, "daily-session")
            assert (kept["id"], kept["parameters"]) == (dep["id"], EDITED)
            assert [s["active"] for s in kept["schedules"]] == [False]
            assert deployment(api, "replay-day")["paused"] is True
            switch_schedule(api, kept, active=True)
            assert next_scheduled_parameters(api, dep["id"]) == EDITED
        log = (serve_dir / "serve.log").read_text()
        assert (
            "daily-session: prefect.yaml unchanged; keeping the server's edits "
            "(parameters, schedule switches)\n"
        ) in log
        assert "replay-day: prefect.yaml unchanged; keeping the server's edits (paused)\n" in log

        document = yaml.safe_load(spec.read_text())
        (entry,) = [d for d in document["deployments"] if d["name"] == "daily-session"]
        entry["parameters"]["config"]["symbols"] = ["SPY", "IWM"]
        spec.write_text(yaml.safe_dump(document, sort_keys=False))
        with run_tradeday_serve(server, serve_dir, "--prefect-yaml", str(spec)):
            changed = deployment(api, "daily-session")
            assert changed["parameters"] == entry["parameters"]
            assert [s["active"] for s in changed["schedules"]] == [True]
            assert deployment(api, "replay-day")["paused"] is True  # its entry is unchanged
            assert next_scheduled_parameters(api, dep["id"]) == entry["parameters"]
        log = (serve_dir / "serve.log").read_text()
        assert (
            "daily-session: prefect.yaml changed since last applied; "
            "its settings replace the server's (parameters)\n"
        ) in log
