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
from tradeday import recording, replay_range
from tradeday.calendar import session_window
from tradeday.config import FeedConfig, parse_session_config
from tradeday.events import NS_PER_S, SessionWindow
from tradeday.feed import FeedError
from tradeday.hub import Hub
from tradeday.hub.recorder import Recorder
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
        # the union, on one connection
        assert sorted(hub.upstream_confirmed["trades"]) == ["ES", "NQ"]
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


LIVE_DAY = date(2024, 6, 4)  # a Tuesday in daylight time, as DAY is; no bundled recording has it


def test_a_day_the_hub_recorded_is_listed_and_replays_through_a_session_as_it_traded_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEDAY_HUB_SECRET", SECRET)
    monkeypatch.setenv(recording.LIVE_DIR_VAR, str(tmp_path / "live"))
    assert LIVE_DAY not in recording.recorded_days()
    shift = (LIVE_DAY - DAY).days * 86_400 * NS_PER_S  # the ES trades, moved to LIVE_DAY
    tape = TRADES.set_column(0, "ts", pc.add(TRADES["ts"], shift))

    def on(feed: dict[str, Any], name: str) -> TradingSession:
        config = parse_session_config(
            {
                "model": {"name": "volume_modulo"},
                "symbols": ["ES"],
                "feed": feed,
                "ledger_url": f"sqlite:///{tmp_path / name / 'ledger.sqlite'}",
                "report_path": str(tmp_path / name / "r.duckdb"),
            }
        )
        return TradingSession(config, session_window(LIVE_DAY))

    port = free_port()
    recorder = Recorder(recording.live_root(), flush_s=0.2)  # where `tradeday hub` writes
    with hub_on(f"ws://127.0.0.1:{port}", recorder=recorder) as hub:
        live = on({"source": "hub", "url": hub.url}, "live")
        done: list[SessionResult] = []
        thread = threading.Thread(target=lambda: done.append(run(live)))
        thread.start()
        wait_for(lambda: len(hub._routes) == 1)  # subscribed before the first trade
        with upstream(tape, port=port, max_connections=1):
            thread.join(120)
            assert not thread.is_alive()
    assert recorder.stats.failed_writes == 0 and recorder.stats.rows == 5_000
    # listed beside the bundled days, for the CLI, the deployment and a range alike
    assert recording.live_days() == [LIVE_DAY]
    assert LIVE_DAY in recording.recorded_days()
    assert set(recording.bundled_days()) < set(recording.recorded_days())
    assert recording.recorded(LIVE_DAY) == tmp_path / "live" / LIVE_DAY.isoformat()
    # replay-day's source: `replay` with no recording given resolves the live day's folder
    replay = on({"source": "replay"}, "replay")
    assert replay_range.plan(replay.config, LIVE_DAY, LIVE_DAY).days == [session_window(LIVE_DAY)]
    replayed = run(replay)
    (live_result,) = done
    assert live_result.ticks == replayed.ticks == 5_000
    assert replayed.status == live_result.status == "completed"
    assert replayed.final_positions == live_result.final_positions == {}
    assert len(fills(live)) > 10
    assert orders(replay) == orders(live) and fills(replay) == fills(live)
    assert (replayed.orders, replayed.net) == (live_result.orders, live_result.net)
    live.close()
    replay.close()


def test_a_day_neither_bundled_nor_live_names_both_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(recording.LIVE_DIR_VAR, str(tmp_path))
    (tmp_path / "2024-06-05").mkdir()
    (tmp_path / "2024-06-05" / ".0-1.parquet").write_bytes(b"")  # a part not yet renamed
    (tmp_path / "notes").mkdir()  # not a day
    assert recording.live_days() == []
    with pytest.raises(LookupError) as missing:
        recording.recorded(date(2024, 6, 5))
    text = str(missing.value)
    assert text.startswith("no recording for 2024-06-05; bundled days: 2013-09-01, ")
    assert text.endswith(
        f"live days recorded by the hub under {tmp_path} (${recording.LIVE_DIR_VAR}): none"
    )
