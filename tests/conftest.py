"""Shared fixtures: one Prefect test server per session, recorded data, temp ledgers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPEN_FIXTURE = FIXTURES / "es-2013-09-03-open.parquet"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real Prefect API (temporary server on a temp database), shared by the whole run."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def open_fixture() -> Path:
    """The first 5,000 regular-hours ES trades of 2013-09-03 (real CME prints)."""
    return OPEN_FIXTURE


@pytest.fixture
def session_paths(tmp_path: Path) -> dict[str, str]:
    return {
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "report_path": str(tmp_path / "reports.duckdb"),
    }
