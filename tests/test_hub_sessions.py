"""Trading sessions of different models through one hub (``feed.source: hub``), the hub fed
by a replay server acting as Alpaca with one connection allowed: real sessions, real
SQLite ledgers, real websockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPEN_FIXTURE, free_port
from tests.test_hub import ALPACA_KEY, ALPACA_SECRET, SECRET, hub_on, upstream, wait_for
from tradeday import recording
from tradeday.calendar import session_window
from tradeday.config import FeedConfig, parse_session_config
from tradeday.events import NS_PER_S, SessionWindow
from tradeday.feed import FeedError
from tradeday.hub import Hub
from tradeday.replay.server import ReplayServer
from tradeday.session import SessionResult, TradingSession
from tradeday.sources import HubSource, make_source

DAY = date(2013, 9, 3)
TRADES = recording.load(OPEN_FIXTURE)
MODELS = ({"name": "volume_modulo"}, {"name": "mean_reversion"})


def session(tmp_path: Path, model: dict[str, Any], **feed: Any) -> TradingSession:
    config = parse_session_config(
        {
            "model": model,
            "symbols": ["ES"],
            "feed": feed,
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "report_path": str(tmp_path / "r.duckdb"),
        }
    )
    return TradingSession(config, session_window(DAY))


def run(s: TradingSession) -> SessionResult:
    try:
        s.run()
    finally:
        result = s.shutdown("completed")
    return result


def fills(s: TradingSession) -> list[tuple]:
    assert s.ledger is not None
    return [(f.ts, f.symbol, f.side, f.qty, f.price) for f in s.ledger.fills(s.run_id)]


def test_two_models_through_one_hub_trade_as_they_do_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", SECRET)
    port = free_port()
    with hub_on(f"ws://127.0.0.1:{port}") as hub:
        sessions = [session(tmp_path / m["name"], m, source="hub", url=hub.url) for m in MODELS]
        results: dict[str, SessionResult] = {}
        threads = [
            threading.Thread(target=lambda s=s: results.update({s.model_name: run(s)}))
            for s in sessions
        ]
        for t in threads:
            t.start()
        wait_for(lambda: len(hub._routes) == 2)  # both subscribed before the first trade
        with upstream(TRADES, port=port, max_connections=1) as alpaca:
            for t in threads:
                t.join(120)
                assert not t.is_alive()
            assert alpaca.stats.authenticated == 1
    alone = {}
    for m in MODELS:
        with ReplayServer(TRADES) as direct:
            s = session(tmp_path / f"alone-{m['name']}", m, url=direct.url)
            alone[m["name"]] = (run(s), fills(s))
            s.close()
    for s in sessions:
        result = results[s.model_name]
        solo_result, solo_fills = alone[s.model_name]
        assert result.ticks == 5_000 and result.final_positions == {}
        assert result.fills > 0 and fills(s) == solo_fills  # its own fills, as if alone
        assert (result.orders, result.net) == (solo_result.orders, solo_result.net)
        assert s.engine.stop_reason == "end of data"
        s.close()
    assert fills(sessions[0]) != fills(sessions[1])  # two models, two different books


def test_a_missing_hub_or_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_session_config(
        {"feed": {"source": "hub", "url": f"ws://127.0.0.1:{free_port()}"}}
    )
    source = make_source(config.feed, session_window(DAY))
    monkeypatch.delenv("TRADEDAY_HUB_SECRET", raising=False)
    with pytest.raises(FeedError, match="set TRADEDAY_HUB_SECRET"):
        source.open()
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", SECRET)
    with pytest.raises(FeedError) as raised:
        source.open()
    assert str(raised.value).startswith(f"no tradeday hub at {config.feed.url} (")
    assert "start it with `tradeday hub`" in str(raised.value)
    assert source.tick_clock and not source.past(0)  # a past day through the hub: a rehearsal


def test_sessions_reconnect_to_a_restarted_hub_and_end_flat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", SECRET)
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    # 57 s of trades at 10x: about 6 s of session, the hub killed and back in the middle
    with upstream(TRADES, speed=10.0, max_connections=1) as alpaca:
        first = Hub(alpaca.url, ALPACA_KEY, ALPACA_SECRET, secret=SECRET, port=port).start()
        sessions = [session(tmp_path / m["name"], m, source="hub", url=url) for m in MODELS]
        results: dict[str, SessionResult] = {}
        threads = [
            threading.Thread(target=lambda s=s: results.update({s.model_name: run(s)}))
            for s in sessions
        ]
        for t in threads:
            t.start()
        wait_for(lambda: len(first._routes) == 2 and first.stats.sent >= 1_000)
        first.stop()  # as a crash would: every session's connection and the upstream drop
        with Hub(alpaca.url, ALPACA_KEY, ALPACA_SECRET, secret=SECRET, port=port) as second:
            for t in threads:
                t.join(120)
                assert not t.is_alive()
            assert second.upstream.stats.connects == 1 and second.stats.sent > 0
    for s in sessions:
        result = results[s.model_name]
        assert result.status == "completed" and result.final_positions == {}
        assert result.counters["reconnects"] >= 1 and result.counters["gaps"] >= 1
        assert 1_000 < result.ticks <= 5_000  # what came before the kill and after it
        assert s.engine.stop_reason == "end of data"
        s.close()


def test_a_hub_session_follows_the_wall_clock_today_and_tick_time_for_a_past_day() -> None:
    now = time.time_ns()
    today = SessionWindow(date.today(), now - 60 * NS_PER_S, now + 3_600 * NS_PER_S)
    live = make_source(FeedConfig(source="hub", stale_after_s=1.0), today)
    assert isinstance(live, HubSource) and not live.tick_clock
    assert live.past(now) and not live.past(now + 3_600 * NS_PER_S)
    assert live.silent_since_open(30) and live.is_stale(1.5)
    rehearsal = make_source(FeedConfig(source="hub", stale_after_s=1.0), session_window(DAY))
    assert rehearsal.tick_clock and not rehearsal.past(now)
    assert not rehearsal.silent_since_open(30) and rehearsal.is_stale(1.5)
    assert not rehearsal.is_stale(0.5)
