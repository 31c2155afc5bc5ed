"""Every benchmark runs in its tiny ``--quick`` mode and returns sane rows.

Figures are not asserted (benchmarks are scripts, machines are noisy): this only keeps
the scripts from rotting. Benchmarks that start replay or Prefect servers are ``slow``.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import pytest

from benchmarks import ALL
from benchmarks.common import Row

SLOW = {"throughput", "latency", "memory", "startup", "cancel", "hub", "sweep"}
EXPECTED = {
    "hotpath": "decoder + engine per trade",
    "throughput": "full path / json baseline",
    "latency": "frame → decision p99",
    "memory": "RSS growth",
    "report_write": "write_report, new file",
    "startup": "flow call → first tick",
    "cancel": "cancel request → flat book",
    "hub": "hub receipt → session receipt",
    "sweep": "flow, 2 workers",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ALL]
)
def test_benchmark_runs_in_quick_mode(name: str) -> None:
    rows = importlib.import_module(f"benchmarks.{name}").run(quick=True)
    assert rows and all(isinstance(r, Row) for r in rows)
    assert all(math.isfinite(r.value) for r in rows), rows
    # memory can shrink between two samples; every other figure is a time, rate or size
    assert all(r.value >= 0 for r in rows if "growth" not in r.metric), rows
    assert any(EXPECTED[name] in r.metric for r in rows), [r.metric for r in rows]
    assert all(r.ok is None or r.target for r in rows)


def test_one_command_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "hotpath", "report_write"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "| benchmark | figure | value |" in out
    assert "| hot path |" in out and "| report |" in out
    assert "machine: " in out
