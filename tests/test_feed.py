"""cpquant's real client, through tradeday's feed, against the replay server over a real
websocket: every protocol case and fault, with exact counts."""

from __future__ import annotations

import time
from datetime import date

import pytest

from tradeday import recording
from tradeday.calendar import session_window
from tradeday.config import parse_session_config
from tradeday.decode import Decoder
from tradeday.engine import EventError
from tradeday.events import Bar, Quote, Trade
from tradeday.feed import FeedError, StreamFeed
from tradeday.replay.server import Faults, ReplayServer
from tradeday.session import TradingSession

DAY = date(2013, 9, 3)


@pytest.fixture(scope="module")
def tape(request):
    from tests.conftest import OPEN_FIXTURE

    table = recording.load(OPEN_FIXTURE, kinds=["t"])
    return table, list(
        zip(table.column("ts").to_pylist(), table.column("size").to_pylist(), strict=True)
    )


class Collector:
    def __init__(self) -> None:
        self.trades: list[Trade] = []
        self.controls: list[dict] = []
        self.feed: StreamFeed | None = None

    def decoder(self) -> Decoder:
        return Decoder(self.on_events, self.on_control)

    def on_events(self, events: list[Trade | Quote | Bar]) -> None:
        self.trades += [e for e in events if isinstance(e, Trade)]

    def on_control(self, msg: dict) -> None:
        self.controls.append(msg)
        if self.feed is not None:
            self.feed.on_control(msg)


def run_feed(
    server: ReplayServer, key: str = "replay", timeout: float = 60.0, **kw
) -> tuple[StreamFeed, Collector]:
    sink = Collector()
    feed = StreamFeed(server.url, key, key, ["ES"], sink.decoder(), backoff_base=0.01, seed=1, **kw)
    sink.feed = feed
    feed.start()
    assert feed.ended.wait(timeout), "feed did not end"
    feed.stop()
    return feed, sink


def test_every_trade_arrives_once_in_order(tape):
    table, rows = tape
    with ReplayServer(table, batch=100) as server:
        feed, sink = run_feed(server)
    assert feed.end_reason == "end of data" and feed.error is None
    assert [(t.ts, t.size) for t in sink.trades] == rows
    assert feed.decoder.stats.skipped == 0
    assert [m.get("msg") for m in sink.controls[:2]] == ["connected", "authenticated"]
    assert sink.controls[2] == {"T": "subscription", "trades": ["ES"], "quotes": [], "bars": []}


def test_one_trade_per_frame(tape):
    table, rows = tape
    with ReplayServer(table, batch=1) as server:
        feed, sink = run_feed(server)
    assert len(sink.trades) == len(rows) and feed.decoder.stats.frames >= len(rows)


def test_bad_key_ends_without_retry_storm(tape):
    table, _ = tape
    with ReplayServer(table, key="right", secret="right") as server:
        feed, _ = run_feed(server, key="wrong")
        assert server.stats.connections == 1
    assert isinstance(feed.error, FeedError)
    assert "402" in str(feed.error) and "auth failed" in str(feed.error)
    assert feed.stats.connects == 1


def test_second_connection_is_refused_with_406(tape):
    table, _ = tape
    with ReplayServer(table, max_connections=1, speed=0.001) as server:
        first_sink = Collector()
        first = StreamFeed(server.url, "replay", "replay", ["ES"], first_sink.decoder())
        first_sink.feed = first
        first.start()
        deadline = time.monotonic() + 10
        while server.stats.authenticated < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second, _ = run_feed(server)
        first.stop()
    assert isinstance(second.error, FeedError) and "406" in str(second.error)
    assert second.stats.connects == 1


def test_malformed_messages_are_counted_and_skipped(tape):
    table, rows = tape
    faults = Faults(
        malformed_after=100,
        malformed=("truncated", "unknown_type", "missing_fields", "non_monotonic"),
    )
    with ReplayServer(table, faults=faults) as server:
        feed, sink = run_feed(server)
    stats = feed.decoder.stats
    assert (
        stats.malformed_frames,
        stats.unknown_messages,
        stats.bad_messages,
        stats.out_of_order,
    ) == (1, 1, 1, 1)
    assert stats.skipped == 4
    assert [(t.ts, t.size) for t in sink.trades] == rows  # nothing real was lost or doubled


def _session(tmp_path, url: str, **feed) -> TradingSession:
    config = parse_session_config(
        {
            "feed": {"url": url, "stale_after_s": 1.0, **feed},
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "report_path": str(tmp_path / "r.duckdb"),
        }
    )
    return TradingSession(config, session_window(DAY))


def test_twenty_drops_reconnect_and_report_gaps(tape, tmp_path):
    table, rows = tape
    every = 240  # drops after messages 240, 480, ..., 4800: twenty of them
    with ReplayServer(table, faults=Faults(drop_every=every)) as server:
        session = _session(tmp_path, server.url)
        try:
            session.run()
        finally:
            result = session.shutdown("completed")
            session.close()
        assert server.stats.drops == 20
    counters = result.counters
    assert counters["reconnects"] == 20 and counters["drops"] == 20
    assert counters["gaps"] == 20 and len(session.gaps) == 20
    assert result.final_positions == {}
    # the tape waits while nobody is connected and flushes before it drops, so nothing
    # is lost: every trade before and after each reconnect is processed
    assert counters["trades"] == len(rows) and counters["skipped"] == 0
    assert all(b > a for a, b in session.gaps)
    assert session.engine.stop_reason == "end of data"


def test_drops_lose_nothing_and_keep_order(tape):
    table, rows = tape
    with ReplayServer(table, faults=Faults(drop_every=240)) as server:
        feed, sink = run_feed(server)
    assert feed.stats.reconnects == 20 and feed.end_reason == "end of data"
    assert [(t.ts, t.size) for t in sink.trades] == rows


def test_silent_stream_is_detected_and_reconnected(tape, tmp_path):
    table, rows = tape
    stale_after = 1.0
    faults = Faults(silent_after=500, silent_for=2.5 * stale_after)
    with ReplayServer(table, faults=faults) as server:
        session = _session(tmp_path, server.url)
        try:
            session.run()
        finally:
            result = session.shutdown("completed")
            session.close()
        assert server.stats.silences == 1
    stale = result.counters["stale_reconnects"]
    # detected while the stream was still silent (2.5x the 1 s threshold), then resumed
    assert stale >= 1
    assert result.counters["reconnects"] == stale
    assert result.counters["trades"] == len(rows)


class Faulty:
    """Wraps the session's model and raises on the 100th trade, as a model's bug would."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen = 0

    def on_trade(self, trade: Trade, position: int):
        self.seen += 1
        if self.seen == 100:
            return 1 / 0
        return self.inner.on_trade(trade, position)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_model_error_ends_the_session_flat_with_its_message(tape, tmp_path):
    table, _ = tape
    with ReplayServer(table) as server:
        session = _session(tmp_path, server.url)
        session.engine.model = Faulty(session.engine.model)
        try:
            with pytest.raises(EventError) as raised:
                session.run()
        finally:
            result = session.shutdown("failed", str(raised.value))
            session.close()
    message = str(raised.value)
    assert message.startswith("ZeroDivisionError: division by zero, handling Trade(ES ")
    assert message.endswith("(model volume_modulo)")
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert session.feed is not None and session.feed.stats.connects == 1  # not a "drop"
    assert session.feed.stats.drops == 0
    assert result.counters["trades"] < len(table) and result.final_positions == {}
