"""Cancel: from the Prefect cancel request to a flat book and to the Cancelled state.

A temporary ``prefect server`` and a ``trading_session.serve`` process (this module with
``--serve``, in its own process group) run the recorded day at 10x real time. Once the
session holds a position, the benchmark asks the API to cancel the flow run the way the
UI does (state CANCELLING), then polls the session's SQLite ledger (the run leaves
"running" only after it flattened and wrote its final positions) and the API (state
CANCELLED) every 20 ms. The serve process sets ``PREFECT_RUNNER_POLL_FREQUENCY=1`` so
runs start quickly; the runner hears of the cancel over its events websocket either way.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    ES_DAY,
    Row,
    prefect_env,
    prefect_server,
    print_report,
    stop_group,
)
from benchmarks.common import workdir as make_workdir

TARGET_FLAT_S = 3.0
DEPLOYMENT = "bench-cancel"


def serve(params_path: str) -> None:
    """The served deployment (runs in the ``--serve`` subprocess).

    Loaded by module path, as ``deployments`` does: the flow's type hints then resolve.
    """
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import EntrypointType

    from flows.session import trading_session

    params = json.loads(Path(params_path).read_text())
    deployment = trading_session.to_deployment(
        name=DEPLOYMENT, parameters=params, entrypoint_type=EntrypointType.MODULE_PATH
    )
    prefect_serve(deployment, pause_on_shutdown=False)


def _ledger_state(path: Path, flow_run_id: str) -> tuple[str | None, int, int]:
    """(status, open position, net filled qty) of the session the flow run started."""
    if not path.exists():
        return None, 0, 0
    con = sqlite3.connect(path, timeout=5)
    try:
        row = con.execute("SELECT run_id, status FROM runs WHERE flow_run_id = ?", [flow_run_id])
        found = row.fetchone()
        if found is None:
            return None, 0, 0
        run_id, status = found
        held = con.execute(
            "SELECT coalesce(sum(abs(qty)), 0) FROM positions WHERE run_id = ?", [run_id]
        ).fetchone()[0]
        net = con.execute(
            "SELECT coalesce(sum(CASE side WHEN 'buy' THEN qty ELSE -qty END), 0) FROM fills "
            "WHERE run_id = ?",
            [run_id],
        ).fetchone()[0]
        return status, held, net
    except sqlite3.OperationalError:  # tables not created yet
        return None, 0, 0
    finally:
        con.close()


def _wait(what: str, check: Any, timeout: float, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


def cancel_once(api: httpx.Client, deployment_id: str, ledger: Path) -> dict[str, float]:
    for attempt in range(
        6
    ):  # Prefect answers 503 while its SQLite is busy: retry, as its client does
        response = api.post(f"/deployments/{deployment_id}/create_flow_run", json={})
        if response.status_code != 503:
            break
        time.sleep(0.25 * 2**attempt)
    if response.status_code != 201:
        raise RuntimeError(f"creating a run: HTTP {response.status_code} {response.text[:500]}")
    flow_run_id = response.json()["id"]
    _wait(
        "an open position",
        lambda: _ledger_state(ledger, flow_run_id)[1] > 0,
        timeout=120,
        every=0.1,
    )
    requested = time.monotonic()
    api.post(
        f"/flow_runs/{flow_run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    ).raise_for_status()
    flat_at = cancelled_at = 0.0
    state: tuple[str | None, int, int] = (None, 0, 0)
    deadline = requested + 60
    while not (flat_at and cancelled_at) and time.monotonic() < deadline:
        if not flat_at:
            state = _ledger_state(ledger, flow_run_id)
            if state[0] not in (None, "running"):
                flat_at = time.monotonic()
        if not cancelled_at:
            flow_run = api.get(f"/flow_runs/{flow_run_id}").json()
            if flow_run["state"]["type"] == "CANCELLED":
                cancelled_at = time.monotonic()
        time.sleep(0.02)
    if not (flat_at and cancelled_at):
        raise TimeoutError(f"cancel not done after 60 s (ledger {state}, flow run {flow_run_id})")
    status, held, net = state
    if status != "cancelled" or held or net:
        raise RuntimeError(f"after cancel: status {status}, open {held}, net filled {net}")
    return {"flat": flat_at - requested, "cancelled": cancelled_at - requested}


def measure(rounds: int) -> list[dict[str, float]]:
    results = []
    with make_workdir() as tmp, prefect_server(tmp) as api_url:
        ledger = tmp / "ledger.sqlite"
        params = {
            "config": {
                "model": {"name": "volume_modulo"},
                "symbols": ["ES"],
                "feed": {"speed": 10.0},
                "ledger_url": f"sqlite:///{ledger}",
                "report_path": str(tmp / "reports.duckdb"),
            },
            "session_date": ES_DAY.isoformat(),
        }
        (tmp / "params.json").write_text(json.dumps(params))
        env = prefect_env(tmp / "prefect-home", api_url) | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        log = (tmp / "serve.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cancel", "--serve", str(tmp / "params.json")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with httpx.Client(base_url=api_url, timeout=10) as api:

                def deployment() -> str | None:
                    reply = api.get(f"/deployments/name/trading-session/{DEPLOYMENT}")
                    return reply.json()["id"] if reply.status_code == 200 else None

                deployment_id = _wait("the served deployment", deployment, 180, every=0.5)
                for _ in range(rounds):
                    results.append(cancel_once(api, deployment_id, ledger))
        except Exception as exc:
            log.flush()
            tail = (tmp / "serve.log").read_text()[-3000:]
            raise RuntimeError(f"{exc}\nserve log:\n{tail}") from exc
        finally:
            stop_group(server)
            log.close()
    return results


def run(quick: bool = False) -> list[Row]:
    results = measure(1 if quick else 3)
    flat = statistics.median(r["flat"] for r in results)
    cancelled = statistics.median(r["cancelled"] for r in results)
    spread = ", ".join(f"{r['flat']:.2f}" for r in results)
    return [
        Row(
            "cancel",
            "cancel request → flat book",
            flat,
            "s",
            f"< {TARGET_FLAT_S:g}",
            flat < TARGET_FLAT_S,
            f"median of {len(results)} ({spread}); served deployment",
        ),
        Row("cancel", "cancel request → Cancelled state", cancelled, "s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--serve", metavar="PARAMS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        print_report(run(args.quick))


if __name__ == "__main__":
    main()
