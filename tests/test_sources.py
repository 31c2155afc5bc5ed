"""Sources: each one's rules, and a replay that would trade nothing refused before it starts."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime

import pytest

from tradeday import backtest, recording
from tradeday.calendar import session_window
from tradeday.config import FeedConfig, parse_session_config
from tradeday.events import NS_PER_S, SessionWindow
from tradeday.session import TradingSession
from tradeday.sources import AlpacaSource, NoData, ReplaySource, make_source
from tradeday.wiring import Credentials, handled_kinds, subscriptions
from tradeday.wiring import build as build_parts

BARS_DAY = date(2023, 1, 9)  # AAPL, MSFT, NVDA, IBM minute bars only
ES_DAY = date(2013, 9, 3)  # ES trades only


def _window_around_now(open_in_s: float, close_in_s: float) -> SessionWindow:
    now = time.time_ns()
    return SessionWindow(
        datetime.now(UTC).date(), now + int(open_in_s * NS_PER_S), now + int(close_in_s * NS_PER_S)
    )


def test_make_source_picks_the_class_the_feed_names():
    window = session_window(ES_DAY)
    assert type(make_source(FeedConfig(), window)) is ReplaySource
    for live in ("iex", "sip", "test"):
        assert type(make_source(FeedConfig(source=live), window)) is AlpacaSource


def test_a_replay_runs_on_tick_time_only():
    source = ReplaySource(FeedConfig(stale_after_s=1.0), session_window(ES_DAY))
    assert source.tick_clock and not source.needs_keys
    assert not source.past(0)  # the wall clock never ends a replay: the engine's tick time does
    assert not source.silent_since_open(0)
    assert source.is_stale(1.5) and not source.is_stale(0.5)
    assert source.recording_path() == recording.bundled(ES_DAY)
    stop = threading.Event()
    source.wait_for_open(stop)  # returns at once: a replay never waits for the open


def test_a_live_source_follows_the_wall_clock():
    keys = Credentials("key-id", "secret")
    in_hours = AlpacaSource(FeedConfig(source="iex"), _window_around_now(-60, 3600), keys)
    assert not in_hours.tick_clock and in_hours.needs_keys
    assert in_hours.is_stale(31.0) and not in_hours.is_stale(29.0)
    assert in_hours.silent_since_open(30) and not in_hours.silent_since_open(120)
    assert in_hours.past(time.time_ns() - NS_PER_S) and not in_hours.past(
        time.time_ns() + 60 * NS_PER_S
    )
    before_open = AlpacaSource(FeedConfig(source="iex"), _window_around_now(3600, 7200), keys)
    assert not before_open.is_stale(10_000.0)  # nothing trades before the open: not stale
    endpoint = in_hours.open()
    assert endpoint.url == "wss://stream.data.alpaca.markets/v2/iex"
    assert (endpoint.key, endpoint.secret) == ("key-id", "secret")
    assert "secret" not in repr(endpoint) and "key-id" not in repr(endpoint)


def test_a_live_source_waits_for_the_open_until_stopped():
    source = AlpacaSource(FeedConfig(source="iex"), _window_around_now(3600, 7200), None)
    stop = threading.Event()
    stop.set()
    source.wait_for_open(stop)  # an hour away, but a stop ends the wait at once
    with pytest.raises(ValueError, match=r"feed\.source 'iex' needs Alpaca keys"):
        source.open()


def test_a_replay_of_a_bars_day_refuses_a_trades_model_naming_what_is_there():
    with pytest.raises(NoData) as refused:
        backtest.run("volume_modulo", BARS_DAY, ["AAPL"])
    message = str(refused.value)
    assert "no trades of AAPL in the 2023-01-09 session" in message
    assert "AAPL: 390 bars; IBM: 390 bars; MSFT: 390 bars; NVDA: 390 bars" in message


def test_a_replay_with_symbols_the_recording_lacks_is_refused():
    with pytest.raises(NoData, match=r"no trades or bars of ES in the 2023-01-09 session"):
        backtest.run("ma_crossover", BARS_DAY, ["ES"])
    assert backtest.run("ma_crossover", BARS_DAY, ["AAPL"]).orders  # the same model, real data


def test_the_session_refuses_before_streaming_and_records_why(tmp_path):
    config = parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["AAPL"],
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "report_path": str(tmp_path / "r.duckdb"),
        }
    )
    session = TradingSession(config, session_window(BARS_DAY))
    try:
        with pytest.raises(NoData) as refused:
            session.run()
        result = session.shutdown("failed", f"NoData: {refused.value}")
    finally:
        session.close()
    assert session.feed is None  # nothing was streamed, no server was started
    assert (result.status, result.ticks, result.orders) == ("failed", 0, 0)
    assert session.ledger is not None
    run = session.ledger.run(session.run_id)
    assert run.status == "failed" and "no trades of AAPL" in run.message
    assert "received no events for AAPL" in run.message


def test_subscriptions_follow_the_model_and_the_broker():
    bars_model = parse_session_config({"model": {"name": "ma_crossover"}, "symbols": ["AAPL"]})
    parts = build_parts(bars_model, session_window(BARS_DAY), run_id="t")
    assert handled_kinds(parts.model) == ["t", "b"]
    # trades always (marks), quotes for the simulator's fills, bars for the model
    assert subscriptions(parts.model, parts.broker).kinds == ["t", "q", "b"]
    trades_model = parse_session_config({"model": {"name": "volume_modulo"}})
    parts = build_parts(trades_model, session_window(ES_DAY), run_id="t")
    assert handled_kinds(parts.model) == ["t"] and parts.subscriptions.kinds == ["t", "q"]
