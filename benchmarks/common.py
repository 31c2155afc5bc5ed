"""Shared pieces: the result table, the machine, the replay server subprocess, a full session.

The replay server runs in its own process for every streaming benchmark, so it never
competes with the client for the GIL: what is measured is tradeday's side of the socket.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psutil

from tradeday.calendar import session_window
from tradeday.config import SessionConfig, parse_session_config
from tradeday.events import SessionWindow

ES_DAY = date(2013, 9, 3)
"""The bundled recorded day: 358,004 regular-hours E-mini S&P 500 trades."""
MB = 1024 * 1024


@dataclass
class Row:
    """One figure of the table; ``ok`` is None when the figure has no target."""

    bench: str
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


def machine() -> dict[str, str]:
    """What the figures were measured on: they mean little without it."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load": " ".join(f"{x:.2f}" for x in load),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
    }


def _fmt(value: float, unit: str) -> str:
    if unit in ("trades/s", "ratio"):
        return f"{value:,.0f}" if unit == "trades/s" else f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(rows: Sequence[Row]) -> str:
    """A markdown table (readable in a terminal, pasted as is into docs/benchmarks.md)."""
    head = "| benchmark | figure | value | unit | target | ok | note |"
    lines = [head, "|---|---|---:|---|---|---|---|"]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "**NO**")
        lines.append(
            f"| {r.bench} | {r.metric} | {_fmt(r.value, r.unit)} | {r.unit} | {r.target} | {ok} | {r.note} |"
        )
    return "\n".join(lines)


def print_report(rows: Sequence[Row]) -> None:
    info = machine()
    print(
        f"\nmachine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"{info['memory']}, load {info['load']}"
    )
    print(table(rows))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def quiet_logger() -> logging.Logger:
    """A session logger that drops info lines (the table is the output)."""
    logger = logging.getLogger("benchmarks.session")
    logger.setLevel(logging.WARNING)
    return logger


@contextlib.contextmanager
def silenced_stdout() -> Iterator[None]:
    """cpquant's ``listen`` prints a line when a stream ends; keep it out of the table."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class ServerProcess:
    """``benchmarks.server`` in a subprocess: a ReplayServer with its own GIL and core.

    ``source`` is ``"es"`` (the bundled recorded day) or ``"synthetic"`` (``trades`` trades
    ``spacing_us`` apart, generated in the server process so the client never holds them).
    """

    def __init__(
        self,
        source: str,
        *,
        batch: int = 100,
        speed: float | None = None,
        trades: int = 0,
        spacing_us: float = 0.0,
        limit: int = 0,
        max_connections: int = 1,
    ) -> None:
        args = [sys.executable, "-m", "benchmarks.server", "--source", source]
        args += ["--max-connections", str(max_connections)]
        args += ["--batch", str(batch), "--trades", str(trades), "--limit", str(limit)]
        args += ["--spacing-us", str(spacing_us)]
        if speed is not None:
            args += ["--speed", str(speed)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_root()
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"benchmark server failed to start (exit {self.proc.returncode})")
        ready = json.loads(line)
        self.url: str = ready["url"]
        self.events: int = ready["events"]
        self.rss_mb: float = ready["rss_mb"]
        self._ps = psutil.Process(self.proc.pid)
        self.stats: dict[str, Any] = {}

    def cpu_seconds(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def stop(self) -> dict[str, Any]:
        """Stop the server; returns its final counters (frames, messages, peak RSS)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            self.stats = json.loads(line) if line else {}
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.stats

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def session_config(url: str, workdir: Path) -> SessionConfig:
    """A replay session on ``url`` with a temp ledger; trades until the recording ends."""
    return parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"url": url},
            # synthetic days are long random walks: the kill switch is not what is measured
            "risk": {"max_daily_loss": 1e12},
            "close_buffer_minutes": 0,
            "heartbeat_seconds": 3600,
            "ledger_url": f"sqlite:///{workdir / 'ledger.sqlite'}",
            "report_path": str(workdir / "reports.duckdb"),
        }
    )


def es_window() -> SessionWindow:
    return session_window(ES_DAY)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tradeday-bench-") as tmp:
        yield Path(tmp)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for Prefect processes of a benchmark: its own home, quiet, offline."""
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1"}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextlib.contextmanager
def prefect_server(tmp: Path, timeout: float = 120.0) -> Iterator[str]:
    """``prefect server start`` on a free port and a temp home; yields the API URL.

    Its own process group, so stopping it also stops whatever it started.
    """
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = (tmp / "prefect-server.log").open("w")
    prefect = str(Path(sys.executable).parent / "prefect")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=prefect_env(tmp / "prefect-home"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; see {log.name}")
            time.sleep(0.2)
        yield api
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
