"""The live view artifact and the operators' events of a real in-process flow run."""

from __future__ import annotations

from datetime import date

import httpx
import pytest
from conftest import wait_until
from prefect.settings import PREFECT_API_URL

from flows.session import trading_session
from tasks.events import FLAT, KILL_SWITCH, NOT_FLAT, RISK_REJECTIONS, STARTED
from tasks.live_view import LIVE_KEY, position_rows
from tradeday.book import Book
from tradeday.config import parse_session_config

DAY = date(2013, 9, 3)


def test_position_rows_mark_realized_unrealized_and_net():
    book = Book()
    book.apply_fill("ES", 10, 100.0, fee=1.0)
    book.apply_fill("ES", -4, 105.0, fee=0.5)
    book.marks["ES"] = 103.0
    book.apply_fill("NQ", 2, 50.0)
    book.apply_fill("NQ", -2, 49.0)
    assert position_rows(book) == [
        ("ES", 6, 103.0, 20.0, 18.0, 1.5, 36.5),
        ("NQ", 0, 50.0, -2.0, 0.0, 0.0, -2.0),  # a fill marks only an unpriced symbol,
    ]


def _api() -> httpx.Client:
    return httpx.Client(base_url=PREFECT_API_URL.value(), timeout=30.0)


def _events(api: httpx.Client, run_id: str) -> list[dict]:
    body = {"filter": {"resource": {"id": [f"tradeday.session.{run_id}"]}}, "limit": 50}
    return api.post("/events/filter", json=body).json()["events"]


@pytest.mark.usefixtures("prefect_harness")
def test_live_view_and_events_of_a_kill_switch_session(open_fixture, session_paths):
    config = parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"recording": str(open_fixture)},
            "risk": {"max_daily_loss": 5.0, "max_position": 5},
            **session_paths,
        }
    )
    state = trading_session(config=config, session_date=DAY, return_state=True)
    assert state.is_completed(), state  # the kill switch flattened: a clean, Completed run
    result = state.result()
    run_id = result["run_id"]
    by_limit = result["counters"]["risk_rejections_by_limit"]
    assert by_limit["max_daily_loss"] == 1 and by_limit["max_position"] > 0, by_limit

    with _api() as api:
        (live,) = [
            a
            for a in api.post(
                "/artifacts/filter", json={"artifacts": {"key": {"any_": [LIVE_KEY]}}}
            ).json()
            if run_id in a["data"]
        ]
        by_name = wait_until(
            lambda: (
                {e["event"]: e for e in _events(api, run_id)}.keys()
                >= {STARTED, KILL_SWITCH, RISK_REJECTIONS, FLAT}
                and {e["event"]: e for e in _events(api, run_id)}
            ),
            60,
            "the session's events",
        )
    text = live["data"]
    assert f"· {result['status']}" in text
    assert f"| **All** | | | | | | **{result['net']:,.2f}** |" in text
    assert f"| {result['orders']:,} | {result['fills']:,} |" in text
    assert "**Kill switch:** max_daily_loss" in text
    assert NOT_FLAT not in by_name
    started = by_name[STARTED]["resource"]
    assert started["tradeday.model"] == "volume_modulo"
    assert started["tradeday.account"]
    # the session is shorter than a minute: one aggregated event at the end, every limit
    assert by_name[RISK_REJECTIONS]["payload"]["by_limit"] == by_limit
    assert by_name[FLAT]["payload"]["positions"] == {}
