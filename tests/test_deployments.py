"""The deployments of prefect.yaml: one definition, the schedule in New York time across DST,
parameters refused by the real server before a run exists, and a holiday run."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
from conftest import DEPLOYMENTS, HUB_DEPLOYMENTS, PrefectServer, wait_until
from prefect import flow
from prefect.server.schemas.schedules import CronSchedule

import deployments
from tradeday.config import parse_session_config
from tradeday.ledger import Ledger

NEW_YORK = ZoneInfo("America/New_York")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def deployment(api, name: str) -> dict:
    sessions = ("daily-session", "replay-day", *HUB_DEPLOYMENTS)
    flow = "trading-session" if name in sessions else name
    response = api.get(f"/deployments/name/{flow}/{name}")
    response.raise_for_status()
    return response.json()


def wait_final(api, flow_run_id: str, timeout: float = 180.0) -> dict:
    def final() -> dict | None:
        run = api.get(f"/flow_runs/{flow_run_id}").json()
        return run if run["state_type"] in FINAL else None

    return wait_until(final, timeout, f"flow run {flow_run_id} to finish")


def test_prefect_yaml_is_the_one_definition():
    built = {d.name: d for d in deployments.runner_deployments()}
    assert tuple(built) == DEPLOYMENTS
    daily = built["daily-session"]
    (schedule,) = daily.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("25 9 * * 1-5", NEW_YORK.key)
    assert daily.entrypoint == "flows.session.trading_session"
    assert all(d.enforce_parameter_schema for d in built.values())
    scheduled = {name for name, d in built.items() if d.schedules}
    assert scheduled == {"daily-session", *HUB_DEPLOYMENTS}


def test_several_models_share_one_hub_and_one_account():
    """The hub deployments: different models, overlapping symbols, one hub, Alpaca paper,
    each at 09:25 New York, paused until the hub runs (a session without it fails)."""
    built = {d.name: d for d in deployments.runner_deployments()}
    configs = {
        name: parse_session_config(built[name].parameters["config"]) for name in HUB_DEPLOYMENTS
    }
    assert {name: (c.model.name, c.symbols) for name, c in configs.items()} == {
        "hub-volume-modulo": ("volume_modulo", ["SPY", "QQQ"]),
        "hub-mean-reversion": ("mean_reversion", ["SPY"]),
        "hub-opening-momentum": ("opening_momentum", ["QQQ", "AAPL"]),
    }
    assert {(c.feed.source, c.feed.url, c.broker.kind) for c in configs.values()} == {
        ("hub", None, "alpaca")
    }
    for name in HUB_DEPLOYMENTS:
        (schedule,) = built[name].schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "25 9 * * 1-5",
            NEW_YORK.key,
        )
        assert schedule.active is False


@pytest.mark.parametrize(
    ("start", "utc_hours"),
    [
        (datetime(2026, 3, 2, tzinfo=UTC), {14, 13}),  # DST starts Sunday 2026-03-08
        (datetime(2026, 10, 26, tzinfo=UTC), {13, 14}),  # DST ends Sunday 2026-11-01
    ],
)
@pytest.mark.slow
def test_schedule_is_0925_new_york_across_dst(served: PrefectServer, start, utc_hours):
    with served.api() as api:
        (entry,) = deployment(api, "daily-session")["schedules"]
    spec = entry["schedule"]
    assert spec["timezone"] == NEW_YORK.key
    dates = asyncio.run(
        CronSchedule(cron=spec["cron"], timezone=spec["timezone"]).get_dates(n=10, start=start)
    )
    local = [d.astimezone(NEW_YORK) for d in dates]
    assert all((t.hour, t.minute) == (9, 25) and t.weekday() < 5 for t in local)
    assert {d.astimezone(UTC).hour for d in dates} == utc_hours  # the UTC time moved by an hour


@pytest.mark.slow
def test_scheduled_runs_on_the_server_are_0925_new_york(served: PrefectServer):
    with served.api() as api:
        dep = deployment(api, "daily-session")
        runs = wait_until(
            lambda: api.post(
                "/flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [dep["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                    "limit": 10,
                },
            ).json(),
            90,
            "the scheduler to create daily-session runs",
        )
        hub_ids = [deployment(api, name)["id"] for name in HUB_DEPLOYMENTS]
        hub_runs = api.post(
            "/flow_runs/filter", json={"deployments": {"id": {"any_": hub_ids}}, "limit": 10}
        ).json()
    for run in runs:
        at = datetime.fromisoformat(run["expected_start_time"]).astimezone(NEW_YORK)
        assert (at.hour, at.minute, at.weekday() < 5) == (9, 25, True), at
    assert hub_runs == []  # paused until the hub runs


@pytest.mark.slow
def test_holiday_run_completes_with_market_closed(served: PrefectServer):
    with served.api() as api:
        dep = deployment(api, "daily-session")
        t0 = time.monotonic()
        created = api.post(
            f"/deployments/{dep['id']}/create_flow_run",
            json={"parameters": {"session_date": "2026-11-26"}},
        )
        assert created.status_code == 201, created.text
        run = wait_final(api, created.json()["id"])
    print(f"\nholiday run: created -> {run['state_name']} in {time.monotonic() - t0:.1f} s")
    assert run["state_type"] == "COMPLETED"
    assert run["state"]["message"] == "market closed 2026-11-26 (Thanksgiving)"
    assert run["name"] == "2026-11-26-volume_modulo"


@pytest.mark.slow
def test_a_served_replay_prints_no_error_and_no_traceback(
    served: PrefectServer, serve_dir: Path, open_fixture, session_paths
):
    """Quiet success under serve, as for the demo and `tradeday run` (tests/test_quiet_output.py):
    the run's own lines in serve's output hold no "Error" and no traceback."""
    log = serve_dir / "serve.log"
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture)},
        **session_paths,
    }
    with served.api() as api:
        start = log.stat().st_size
        created = api.post(
            f"/deployments/{deployment(api, 'replay-day')['id']}/create_flow_run",
            json={"parameters": {"config": config, "session_date": "2013-09-03"}},
        )
        assert created.status_code == 201, created.text
        run = wait_final(api, created.json()["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    out = log.read_bytes()[start:].decode(errors="replace")
    assert f"Flow run '{run['name']}'" in out  # the run's own lines were read
    assert "Error" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "field", "reason"),
    [
        ({"name": "nope"}, "config.model.name", "'nope' is not one of ['volume_modulo', "),
        (
            {"name": "volume_modulo", "quantity": -5},
            "config.model.quantity",
            "-5 is less than the minimum of 1",
        ),
        (
            {"name": "volume_modulo", "foo": 1},
            "config.model.foo",
            "1 should not be valid under {'description': 'not a field of the volume_modulo model, "
            "whose fields are: name, sell_modulus, buy_modulus, quantity'}",
        ),
    ],
)
def test_invalid_parameters_are_refused_before_a_run_exists(
    served: PrefectServer, session_paths, tmp_path: Path, model, field, reason
):
    params = {"config": {"model": model, **session_paths}, "session_date": "2013-09-03"}
    with served.api() as api:
        dep = deployment(api, "replay-day")
        count = {"deployments": {"id": {"any_": [dep["id"]]}}}
        before = api.post("/flow_runs/count", json=count).json()
        refused = api.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params})
        after = api.post("/flow_runs/count", json=count).json()
    assert refused.status_code == 409, refused.text
    assert f"field '{field}'. Failure reason: {reason}" in refused.json()["detail"]
    assert after == before  # no run was created, so nothing can have traded
    assert not (tmp_path / "ledger.sqlite").exists()


def test_session_date_default_is_a_recorded_day():
    (replay,) = [d for d in deployments.definitions() if d["name"] == "replay-day"]
    from tradeday import recording

    assert date.fromisoformat(replay["parameters"]["session_date"]) in recording.bundled_days()


@pytest.mark.slow
def test_flatten_now_closes_what_a_killed_run_left_open(
    served: PrefectServer, open_fixture, session_paths
):
    # buys only (every even size), so the book is long from the first fill until flattened
    model = {"name": "volume_modulo", "buy_modulus": 2, "sell_modulus": 1_000_003, "quantity": 1}
    config = {
        "model": model,
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    ledger = Ledger(session_paths["ledger_url"])
    try:
        with served.api() as api:
            created = api.post(
                f"/deployments/{deployment(api, 'replay-day')['id']}/create_flow_run",
                json={"parameters": {"config": config, "session_date": "2013-09-03"}},
            )
            assert created.status_code == 201, created.text

            def long_run():
                runs = ledger.runs()
                held = runs and any(p.qty > 0 for p in ledger.positions(runs[0].run_id))
                return runs[0] if held else None

            run = wait_until(long_run, 180, "a long position in the ledger")
            os.kill(run.pid, signal.SIGKILL)  # a crash: no finally, no flatten
            crashed = wait_final(api, created.json()["id"])
            left = {p.symbol: p.qty for p in ledger.positions(run.run_id) if p.qty}
            flatten = api.post(
                f"/deployments/{deployment(api, 'flatten-now')['id']}/create_flow_run",
                json={"parameters": {k: session_paths[k] for k in ("ledger_url", "report_path")}},
            )
            assert flatten.status_code == 201, flatten.text
            flattened = wait_final(api, flatten.json()["id"])
        after = ledger.run(run.run_id)
        positions = ledger.positions(run.run_id)
        recovery = [o for o in ledger.orders(run.run_id) if o.purpose == "recovery"]
        all_fills = ledger.fills(run.run_id)
        n_fills = len(all_fills)
        cash = -sum(f.qty * f.price * (1 if f.side == "buy" else -1) + f.fee for f in all_fills)
    finally:
        ledger.close()
    with duckdb.connect(session_paths["report_path"], read_only=True) as con:
        reported = con.execute(
            "SELECT s.status, s.fills, sum(p.net), sum(p.end_position) FROM sessions s "
            "JOIN pnl p USING (session_id) WHERE session_id = ? GROUP BY ALL",
            [run.run_id],
        ).fetchall()
    print(f"\nflatten-now: killed run left {left}; recovered with {len(recovery)} order(s)")
    assert crashed["state_type"] == "CRASHED"
    assert left and flattened["state_type"] == "COMPLETED", flattened["state"]
    assert after.status == "crashed" and "flatten-now" in after.message
    assert all(p.qty == 0 for p in positions)
    assert [(o.symbol, o.side, o.qty) for o in recovery] == [("ES", "sell", left["ES"])]
    # the crashed session is in the DuckDB report at once, its P&L the cash its fills moved
    ((status, fills, net, end_qty),) = reported
    assert (status, end_qty) == ("crashed", 0)
    assert fills == n_fills
    assert net == pytest.approx(cash, abs=1e-6)


def test_progress_artifact_is_throttled(prefect_harness, monkeypatch):
    import tasks.ui

    sent: list[float] = []
    monkeypatch.setattr(
        tasks.ui, "update_progress_artifact", lambda _id, progress: sent.append(progress)
    )

    @flow
    def replay_flushes() -> None:
        progress = tasks.ui.SessionProgress("test", logging.getLogger(__name__))
        for i in range(3001):  # one call per 1 s flush over a replayed session
            progress(i / 3000)
        progress.done()

    replay_flushes()
    print(f"\n{len(sent)} progress updates for 3,001 flushes")
    assert len(sent) <= 22 and sent == sorted(sent) and sent[-1] == 100.0
