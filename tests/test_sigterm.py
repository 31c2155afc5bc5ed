"""SIGTERM to a running session process: the book ends flat and the run is recorded as cancelled."""

from __future__ import annotations

import os
import signal

import pytest

from tests.ledger_probe import session_process
from tradeday.ledger import Ledger


@pytest.mark.slow
def test_sigterm_mid_stream_flattens_and_records_cancelled(tmp_path, open_fixture, session_paths):
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    with session_process(config, tmp_path, env, fills=3, timeout=120) as (proc, log):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        out = log.read_text()
    ledger = Ledger(session_paths["ledger_url"])
    (run,) = ledger.runs()
    assert run.status == "cancelled", (run.status, run.message, out[-2000:])
    fills = ledger.fills(run.run_id)
    assert len(fills) >= 3
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in ledger.positions(run.run_id))
    assert run.counters["ticks"] < 5000  # it really was stopped mid-stream
    ledger.close()
