"""Quiet success: a session that works prints no "Error" and no traceback, and `run` logs at INFO.

The demo and `tradeday run` run for real in their own processes (each starts Prefect's
temporary server, the replay server and cpquant's client over a real websocket), on the
first minute of the recorded ES day.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradeday import feed

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _cli(args: list[str], tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)
    return subprocess.run(
        [str(BIN / "tradeday"), *args, "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )


def _config(tmp_path: Path, open_fixture: Path, **extra) -> dict:
    return {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), **extra.pop("feed", {})},
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "report_path": str(tmp_path / "reports.duckdb"),
        **extra,
    }


def _assert_quiet(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Error" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return out


def test_demo_prints_its_summary_and_no_error(tmp_path, open_fixture):
    proc = _cli(["demo"], tmp_path, _config(tmp_path, open_fixture))
    out = _assert_quiet(proc)
    assert "ticks processed 5,000" in out and "(flat)" in out


def test_run_logs_heartbeats_at_info_and_no_error(tmp_path, open_fixture):
    config = _config(tmp_path, open_fixture, feed={"speed": 20.0}, heartbeat_seconds=0.5)
    proc = _cli(["run", "--date", "2013-09-03"], tmp_path, config)
    out = _assert_quiet(proc)
    heartbeats = [line for line in out.splitlines() if "heartbeat: ticks=" in line]
    assert len(heartbeats) >= 2, out[-3000:]
    assert all(" | INFO " in line for line in heartbeats)
    assert '"ticks": 5000' in proc.stdout


def test_cpquants_listen_print_becomes_a_debug_line(caplog, capsys):
    """The stand-in ``print`` open_client installs into cpquant.data (no server needed)."""
    from cpquant import data as cpquant_data

    cpquant_data.print = feed._quiet_listen_end  # what open_client does
    with caplog.at_level(logging.DEBUG, logger="tradeday.feed"):
        cpquant_data.print("Error receiving message from websocket!")
    assert capsys.readouterr().out == ""
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "cpquant: Error receiving message from websocket!")
    ]


def test_websockets_end_of_stream_error_is_one_debug_line_other_errors_pass(caplog):
    """The record websockets' receive thread logs when data lands after our close.

    The race itself (bytes read just before another thread closes the socket) cannot be
    forced reliably, so the test logs the exact record websockets writes.
    """
    ws_log = logging.getLogger("websockets.client")
    with caplog.at_level(logging.DEBUG):
        try:
            raise EOFError("stream ended")
        except EOFError:
            ws_log.error("unexpected internal error", exc_info=True)
        try:
            raise ValueError("a real bug")
        except ValueError:
            ws_log.error("unexpected internal error", exc_info=True)
    kept = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert kept == [
        (
            "tradeday.feed",
            logging.DEBUG,
            "websockets: data arrived after the close (stream ended); ignored",
        ),
        ("websockets.client", logging.ERROR, "unexpected internal error"),
    ]
