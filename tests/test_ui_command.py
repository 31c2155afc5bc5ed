"""``tradeday ui`` (what ``make ui`` runs) as a user starts it: a Prefect server with its home
under data/, the deployments served on it, the UI's URL printed; SIGTERM stops both and the
command exits 0. Also measures Submit -> the run picked up and Running (printed)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import BIN, DEPLOYMENTS, free_port, wait_until

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), with their command lines checked by the caller."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def test_tradeday_ui_serves_the_deployments_and_stops_cleanly_on_sigterm(tmp_path: Path):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_HOME", "PREFECT_UI", "PREFECT_SERVER_API"))
    }
    lines: list[str] = []
    proc = subprocess.Popen(
        [str(BIN / "tradeday"), "ui", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is not None or any(f"UI is at {url} " in line for line in lines),
            600,
            "tradeday ui to print the UI's URL",
        )
        assert proc.poll() is None, "".join(lines)
        kids = {pid: cmdline(pid) for pid in children_of(proc.pid)}
        (server_pid,) = [p for p, c in kids.items() if "prefect server start" in c]
        (serve_pid,) = [p for p, c in kids.items() if c.endswith("tradeday serve ")]
        assert (tmp_path / "data" / "prefect" / "prefect.db").exists()  # its own home
        with httpx.Client(base_url=f"{url}/api", timeout=30.0) as api:
            names = {d["name"] for d in api.post("/deployments/filter", json={}).json()}
            assert names == set(DEPLOYMENTS)
            automations = {a["name"] for a in api.post("/automations/filter", json={}).json()}
            assert automations  # serve created them
            report = api.get("/deployments/name/end-of-day-report/end-of-day-report").json()
            params = {
                "session_date": "2013-09-03",
                "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
                "report_path": str(tmp_path / "reports.duckdb"),
            }
            t0 = time.monotonic()
            created = api.post(
                f"/deployments/{report['id']}/create_flow_run", json={"parameters": params}
            )
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            seen: dict[str, float] = {}

            def finished() -> str | None:
                state = api.get(f"/flow_runs/{run_id}").json()["state_type"]
                seen.setdefault(state, time.monotonic() - t0)
                return state if state in ("COMPLETED", "FAILED", "CRASHED") else None

            assert wait_until(finished, 240, "the report run", interval=0.1) == "COMPLETED"
        print(
            f"\nSubmit -> picked up (Pending) {seen.get('PENDING', float('nan')):.1f} s, "
            f"-> Running {seen.get('RUNNING', float('nan')):.1f} s, "
            f"-> Completed {seen['COMPLETED']:.1f} s; load {os.getloadavg()[0]:.1f}"
        )

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, "".join(lines)
        print(f"tradeday ui stopped in {time.monotonic() - t0:.1f} s")
        assert not _alive(serve_pid) and not _alive(server_pid)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/api/health", timeout=5.0)
        output = "".join(lines)
        assert "SIGTERM; stopping tradeday serve, then the Prefect server" in output
        assert "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
