"""Trading sessions of different models through one hub (``feed.source: hub``), the hub fed
by a replay server acting as Alpaca with one connection allowed: real sessions, real
SQLite ledgers, real websockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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
# three models, their symbols overlapping (the two-session tests use the first two on ES)
MODELS = (
    ({"name": "volume_modulo"}, ["ES"]),
    ({"name": "mean_reversion", "lookback": 20}, ["ES", "NQ"]),
    ({"name": "ma_crossover", "fast_window": 5, "slow_window": 20}, ["NQ"]),
)


def session(
    tmp_path: Path, model: dict[str, Any], symbols: list[str] | None = None, **feed: Any
) -> TradingSession:
    config = parse_session_config(
        {
            "model": model,
            "symbols": symbols or ["ES"],
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


def orders(s: TradingSession) -> list[tuple]:
    assert s.ledger is not None
    return [
        (o.ts, o.symbol, o.side, o.qty, o.status, o.filled_qty, o.avg_fill_price)
        for o in s.ledger.orders(s.run_id)
    ]


def fills(s: TradingSession) -> list[tuple]:
    assert s.ledger is not None
    return [(f.ts, f.symbol, f.side, f.qty, f.price) for f in s.ledger.fills(s.run_id)]


def two_symbol_tape(rows: int = 2_000) -> pa.Table:
    """The first ``rows`` ES trades, and a copy as NQ (at half the price, a share larger,
    500 ns later), merged in time order: a short tape with two symbols to overlap on."""
    es = TRADES.slice(0, rows)
    nq = es.set_column(es.schema.get_field_index("symbol"), "symbol", pa.array(["NQ"] * rows))
    for name, change in (("price", lambda c: pc.divide(c, 2.0)), ("size", lambda c: pc.add(c, 1))):
        nq = nq.set_column(nq.schema.get_field_index(name), name, change(nq[name]))
    nq = nq.set_column(nq.schema.get_field_index("ts"), "ts", pc.add(nq["ts"], 500))
    return pa.concat_tables([es, nq]).sort_by("ts")


def test_three_models_on_overlapping_symbols_through_one_hub_trade_as_they_do_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", SECRET)
    tape = two_symbol_tape()
    port = free_port()
    with hub_on(f"ws://127.0.0.1:{port}") as hub:
        sessions = [
            session(tmp_path / m["name"], m, symbols, source="hub", url=hub.url)
            for m, symbols in MODELS
        ]
        results: dict[str, SessionResult] = {}
        threads = [
            threading.Thread(target=lambda s=s: results.update({s.model_name: run(s)}))
            for s in sessions
        ]
        for t in threads:
            t.start()
        wait_for(lambda: len(hub._routes) == 3)  # all subscribed before the first trade
        # the upstream allows one connection, as Alpaca does: the hub's
        with upstream(tape, port=port, max_connections=1) as alpaca:
            for t in threads:
                t.join(120)
                assert not t.is_alive()
            assert alpaca.stats.authenticated == 1
        assert sorted(hub.upstream_confirmed["trades"]) == ["ES", "NQ"]  # the union, on one connection
    alone = {}
    for m, symbols in MODELS:
        with ReplayServer(tape) as direct:
            s = session(tmp_path / f"alone-{m['name']}", m, symbols, url=direct.url)
            alone[m["name"]] = (run(s), orders(s), fills(s))
            s.close()
    for s, (_, symbols) in zip(sessions, MODELS, strict=True):
        result = results[s.model_name]
        solo_result, solo_orders, solo_fills = alone[s.model_name]
        assert result.ticks == 2_000 * len(symbols) and result.final_positions == {}
        assert {f[1] for f in fills(s)} == set(symbols)  # it traded every symbol it follows
        assert orders(s) == solo_orders and fills(s) == solo_fills  # as if alone
        assert (result.orders, result.net) == (solo_result.orders, solo_result.net)
        assert s.engine.stop_reason == "end of data"
        s.close()
    books = [fills(s) for s in sessions]
    assert len({tuple(b) for b in books}) == 3  # three models, three different books


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
        sessions = [session(tmp_path / m["name"], m, source="hub", url=url) for m, _ in MODELS[:2]]
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
