"""SIGTERM to a running session process: the book ends flat and the run is recorded as cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.ledger_probe import fill_count
from tradeday.ledger import Ledger


@pytest.mark.slow
def test_sigterm_mid_stream_flattens_and_records_cancelled(tmp_path, open_fixture, session_paths):
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 1.0},
        **session_paths,
    }
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL")
    log = tmp_path / "session.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradeday.cli", "run", "--config", str(cfg), "--date", "2013-09-03"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while fill_count(session_paths["ledger_url"]) < 3:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "session never started filling"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        out = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = Ledger(session_paths["ledger_url"])
    (run,) = ledger.runs()
    assert run.status == "cancelled", (run.status, run.message, out[-2000:])
    fills = ledger.fills(run.run_id)
    assert len(fills) >= 3
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in ledger.positions(run.run_id))
    assert run.counters["ticks"] < 5000  # it really was stopped mid-stream
    ledger.close()
