"""Scale-out on one machine, as docs/scaling.md does it on many: a Prefect server on
PostgreSQL, the prefect.yaml deployments on a process work pool, two ``prefect worker``
processes running three sessions with different models at once against a PostgreSQL
ledger, then one ``end-of-day-report`` run consolidating them into DuckDB. The server
requires Prefect's API authentication, as the recipe sets it up: a request without the
auth string is refused, and everything the recipe runs carries it."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from base64 import b64encode
from pathlib import Path

import duckdb
import httpx
import psycopg
import pytest
from conftest import BIN, ROOT, PrefectServer, stop_process, wait_until

import models
from tradeday.ledger import Ledger

pytestmark = pytest.mark.slow

DAY = "2013-09-03"
POOL = "tradeday"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _create_databases(postgres_url: str, *names: str) -> dict[str, str]:
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as con:
        for name in names:
            con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.execute(f'CREATE DATABASE "{name}"')
    base = postgres_url.rsplit("/", 1)[0]
    return {name: f"{base}/{name}" for name in names}


def _prefect(server: PrefectServer, *args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        env=server.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _refused_without_the_auth_string(api_url: str, auth: str) -> None:
    """No header, a wrong password, or the password alone: 401 Unauthorized. The health
    probe stays open (Prefect exempts it, for load balancers)."""
    url = f"{api_url}/work_pools/filter"
    user, password = auth.split(":", 1)
    for wrong in (None, f"{user}:wrong", password):
        headers = {"Authorization": f"Basic {b64encode(wrong.encode()).decode()}"} if wrong else {}
        refused = httpx.post(url, json={}, headers=headers, timeout=30.0)
        assert refused.status_code == 401, (wrong and wrong.split(":")[0], refused.text)
    assert httpx.post(url, json={}, auth=(user, password), timeout=30.0).status_code == 200
    assert httpx.get(f"{api_url}/health", timeout=30.0).status_code == 200


def _run_all(api, deployment_id: str, parameters: list[dict], timeout: float) -> list[dict]:
    ids = []
    for params in parameters:
        created = api.post(
            f"/deployments/{deployment_id}/create_flow_run", json={"parameters": params}
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])

    def finished() -> list[dict] | None:
        runs = [api.get(f"/flow_runs/{i}").json() for i in ids]
        return runs if all(r["state_type"] in FINAL for r in runs) else None

    return wait_until(finished, timeout, f"{len(ids)} flow runs on the work pool", interval=1.0)


@pytest.mark.timeout(
    1500
)  # a PostgreSQL cluster, a server, a deploy, two workers: slow on a loaded machine
def test_three_sessions_on_two_workers_then_one_report(
    start_prefect_server, postgres_url, open_fixture, tmp_path: Path
):
    urls = _create_databases(postgres_url, "prefect", "ledger")
    ledger_url = urls["ledger"]
    server_db = urls["prefect"].replace("postgresql+psycopg://", "postgresql+asyncpg://")
    t_start = time.monotonic()
    auth = f"tradeday:{secrets.token_urlsafe(18)}"
    with start_prefect_server(
        tmp_path / "prefect",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=server_db,
        PREFECT_SERVER_API_AUTH_STRING=auth,  # the server's side
        PREFECT_API_AUTH_STRING=auth,  # every client's: the CLI, workers, flow runs
    ) as server:
        _refused_without_the_auth_string(server.api_url, auth)
        _prefect(server, "work-pool", "create", POOL, "--type", "process")
        _prefect(server, "deploy", "--name", "replay-day", "--name", "end-of-day-report")
        home = tmp_path / "worker-home"  # each worker machine's TRADEDAY_HOME
        home.mkdir()
        workers = []
        try:
            for i in (1, 2):
                log = tmp_path / f"worker-{i}.log"
                env = {
                    **{
                        k: v for k, v in server.env.items() if k != "PREFECT_SERVER_API_AUTH_STRING"
                    },
                    "TRADEDAY_HOME": str(home),
                    "PREFECT_WORKER_QUERY_SECONDS": "1",
                }
                workers.append(
                    (
                        log,
                        subprocess.Popen(
                            [
                                str(BIN / "prefect"),
                                "worker",
                                "start",
                                "--pool",
                                POOL,
                                "--name",
                                f"worker-{i}",
                                "--limit",
                                "2",
                            ],
                            env=env,
                            cwd=home,
                            stdout=log.open("w"),
                            stderr=subprocess.STDOUT,
                        ),
                    )
                )
            with server.api() as api:
                replay = api.get("/deployments/name/trading-session/replay-day").json()
                report = api.get("/deployments/name/end-of-day-report/end-of-day-report").json()
                assert replay["work_pool_name"] == POOL
                sessions = [
                    {
                        "config": {
                            "model": {"name": model},
                            "symbols": ["ES"],
                            # ~3 s of ticks each after a flow-run process start: they overlap
                            "feed": {"recording": str(open_fixture), "speed": 20.0},
                            "ledger_url": ledger_url,
                            # DuckDB takes one writer at a time: one file per session here,
                            # the consolidated report is the report flow's
                            "report_path": str(tmp_path / f"session-{i}.duckdb"),
                        },
                        "session_date": DAY,
                    }
                    for i, model in enumerate(models.names()[:3])
                ]
                t_runs = time.monotonic()
                runs = _run_all(api, replay["id"], sessions, 300)
                sessions_s = time.monotonic() - t_runs
                consolidated = tmp_path / "reports.duckdb"
                (report_run,) = _run_all(
                    api,
                    report["id"],
                    [
                        {
                            "session_date": DAY,
                            "ledger_url": ledger_url,
                            "report_path": str(consolidated),
                        }
                    ],
                    180,
                )
        finally:
            for _, proc in workers:
                stop_process(proc, 40.0)
        by_worker = {
            log.stem: len(set(re.findall(r"flow run '([0-9a-f-]{36})'", log.read_text())))
            for log, _ in workers
        }
        logs = [log.read_text() for log, _ in workers]
    total_s = time.monotonic() - t_start

    assert [r["state_type"] for r in runs] == ["COMPLETED"] * 3, [r["state"] for r in runs]
    assert report_run["state_type"] == "COMPLETED", report_run["state"]
    ledger = Ledger(ledger_url)
    try:
        rows = ledger.runs(DAY)
        open_positions = [p for r in rows for p in ledger.positions(r.run_id) if p.qty]
    finally:
        ledger.close()
    spans = sorted((r.started_ns, r.ended_ns) for r in rows)
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    print(
        f"\nscale-out: 3 sessions on 2 workers in {sessions_s:.1f} s (flow runs per worker "
        f"{by_worker}, at most {overlapping} at once); whole test {total_s:.1f} s"
    )
    assert len(rows) == 3 and not open_positions
    assert not [text for text in logs if auth.split(":", 1)[1] in text]  # never logged
    assert overlapping >= 2  # the workers really ran sessions at the same time

    con = duckdb.connect(str(consolidated), read_only=True)
    try:
        reported = con.execute(
            "SELECT model, status FROM sessions WHERE session_date = ? ORDER BY model", [DAY]
        ).fetchall()
        end_positions = con.execute("SELECT sum(abs(end_position)) FROM pnl").fetchone()[0]
    finally:
        con.close()
    assert reported == sorted((s["config"]["model"]["name"], "completed") for s in sessions)
    assert not end_positions
