"""The Prefect API is not on the trading path (issue 13): the Prefect server stopped and
restarted while ``tradeday run`` streams a replay at real speed. Trading goes on, the
ledger and the report are complete, and the exit code says the session completed."""

from __future__ import annotations

import duckdb
import pytest
from conftest import free_port, run_prefect_server, wait_until

from tests.ledger_probe import fill_count, only_run, session_process

pytestmark = pytest.mark.slow


def test_a_prefect_server_restart_mid_session_neither_stops_nor_fails_it(
    tmp_path, open_fixture, session_paths
):
    home, port = tmp_path / "prefect", free_port()
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        # 57 s of real prints at real time: the server goes down while the session streams
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    first = run_prefect_server(home, port=port)
    server = first.__enter__()
    try:
        with session_process(config, tmp_path, server.env, fills=3, timeout=240) as (proc, log):
            first.__exit__(None, None, None)
            first = None
            down_at = fill_count(config["ledger_url"])
            wait_until(
                lambda: fill_count(config["ledger_url"]) > down_at,
                120,
                "fills while Prefect is down",
            )
            with run_prefect_server(home, port=port):
                code = proc.wait(600)
    finally:
        if first is not None:
            first.__exit__(None, None, None)
    output = log.read_text()
    assert code == 0, output[-3000:]
    run, fills, positions = only_run(config["ledger_url"])
    assert (run.status, run.counters["ticks"]) == ("completed", 5000), run.message
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in positions)
    con = duckdb.connect(config["report_path"], read_only=True)
    try:
        reported = con.execute(
            "SELECT count(*) FROM fills WHERE session_id = ?", [run.run_id]
        ).fetchone()[0]
    finally:
        con.close()
    assert reported == len(fills)
