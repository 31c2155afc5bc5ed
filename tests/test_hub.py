"""The market-data hub between a replay server acting as Alpaca (one connection allowed, its
fault knobs) and real cpquant clients as sessions, over real websockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import websockets.exceptions
from websockets.sync.client import connect as ws_connect  # bound before open_client patches it

from tests.conftest import BIN, OPEN_FIXTURE, free_port
from tradeday import recording
from tradeday.decode import Decoder
from tradeday.events import Trade
from tradeday.feed import END_OF_REPLAY, FeedError, StreamFeed, open_client
from tradeday.hub import HUB_KEY, Hub
from tradeday.hub.recorder import Recorder
from tradeday.replay.server import Faults, ReplayServer
from tradeday.replay.wire import Format, messages

SECRET = "local-hub-secret"
ALPACA_KEY, ALPACA_SECRET = "fake-key-hub-0001", "sk-hub-test-secret-0001"
TRADES = recording.load(OPEN_FIXTURE)  # 5,000 real ES trades
BARS = recording.load(recording.bundled(date(2023, 1, 3))).slice(0, 2_000)
"""Real minute bars of AAPL, IBM, MSFT and NVDA, 500 each, after the trades on the tape."""
TAPE = pa.concat_tables([TRADES, BARS])


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def upstream(data: Any = TAPE, **options: Any) -> ReplayServer:
    """A replay server acting as Alpaca: the real keys, one connection, like most plans."""
    return ReplayServer(data, key=ALPACA_KEY, secret=ALPACA_SECRET, **options)


@contextmanager
def hub_on(url: str, **options: Any) -> Iterator[Hub]:
    hub = Hub(url, ALPACA_KEY, ALPACA_SECRET, secret=SECRET, backoff_base=0.05, seed=1, **options)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


class Session:
    """A real cpquant client on the hub, its listen loop on a thread, every frame kept."""

    def __init__(self, hub: Hub, secret: str = SECRET, **subscription: list[str]) -> None:
        self.client = open_client(hub.url, HUB_KEY, secret)
        self.frames: list[str] = []
        for kind, symbols in subscription.items():
            if kind == "bars":
                self.client.subscribe_bars(symbols, "1Min")
            else:
                getattr(self.client, f"subscribe_{kind}")(symbols)
        self.thread = threading.Thread(target=self.client.listen, args=(self.frames.append,))
        self.thread.start()

    def ended(self, timeout: float = 60.0) -> Session:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "session still listening"
        return self

    def messages(self) -> list[dict[str, Any]]:
        return [m for f in self.frames for m in orjson.loads(f)]

    def data(self) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["T"] in ("t", "q", "b")]

    def control(self) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["T"] not in ("t", "q", "b")]

    @property
    def closed(self) -> tuple[int | None, str | None]:
        return self.client.socket.close_code, self.client.socket.close_reason

    def leave(self) -> None:
        self.client.close()
        self.ended()


def expected(kinds: dict[str, list[str]]) -> list[dict[str, Any]]:
    """What a subscription takes from the tape, in tape order, as the replay encodes it."""
    mask = None
    for kind, symbols in kinds.items():
        take = pc.and_(pc.equal(TAPE["kind"], kind), pc.is_in(TAPE["symbol"], pa.array(symbols)))
        mask = take if mask is None else pc.or_(mask, take)
    return messages(TAPE.filter(mask), Format.JSON)


def test_sessions_get_exactly_their_own_events_in_order() -> None:
    port = free_port()
    # the hub and its sessions first, the upstream after: every session subscribed before
    # the first event, so each must get all of its own (the hub retries the refused connect)
    with hub_on(f"ws://127.0.0.1:{port}") as hub:
        a = Session(hub, trades=["ES"])
        b = Session(hub, bars=["AAPL", "MSFT"])
        c = Session(hub, trades=["ES"], bars=["MSFT", "NVDA"])
        wait_for(lambda: hub.upstream_subscription()["bars"] == ["AAPL", "MSFT", "NVDA"])
        assert hub.upstream_subscription() == {
            "trades": ["ES"],
            "quotes": [],
            "bars": ["AAPL", "MSFT", "NVDA"],
        }
        with upstream(port=port, max_connections=1) as alpaca:
            for s in (a, b, c):
                s.ended()
            assert alpaca.stats.authenticated == 1  # one upstream connection for three
        assert hub.upstream.stats.connects == 1
    assert a.data() == expected({"t": ["ES"]}) and len(a.data()) == 5_000
    assert b.data() == expected({"b": ["AAPL", "MSFT"]}) and len(b.data()) == 1_000
    assert c.data() == expected({"t": ["ES"], "b": ["MSFT", "NVDA"]})
    assert len(c.data()) == 6_000
    assert c.control() == [
        {"T": "success", "msg": "connected"},
        {"T": "success", "msg": "authenticated"},
        {"T": "subscription", "trades": ["ES"], "quotes": [], "bars": []},
        {"T": "subscription", "trades": ["ES"], "quotes": [], "bars": ["MSFT", "NVDA"]},
    ]
    for s in (a, b, c):
        assert s.closed == (1000, END_OF_REPLAY)
        text = "".join(s.frames)
        assert ALPACA_KEY not in text and ALPACA_SECRET not in text  # keys never leave the hub


def test_upstream_subscription_is_the_union_as_sessions_come_and_go() -> None:
    with upstream(speed=1e-6) as alpaca, hub_on(alpaca.url) as hub:  # a crawling tape
        a = Session(hub, trades=["ES"], quotes=["SPY"])
        b = Session(hub, trades=["ES", "NQ"])
        union = {"trades": ["ES", "NQ"], "quotes": ["SPY"], "bars": []}
        wait_for(lambda: hub.upstream_confirmed == union)
        a.leave()
        wait_for(
            lambda: hub.upstream_confirmed == {"trades": ["ES", "NQ"], "quotes": [], "bars": []}
        )
        b.client.unsubscribe_trades(["NQ"])
        wait_for(lambda: hub.upstream_confirmed == {"trades": ["ES"], "quotes": [], "bars": []})
        b.leave()
        wait_for(lambda: hub.upstream_confirmed == {"trades": [], "quotes": [], "bars": []})
        assert hub.upstream.stats.connects == 1 and alpaca.stats.connections == 1


def test_a_slow_session_is_cut_with_407_and_a_fast_one_gets_everything() -> None:
    big = pa.concat_tables([TRADES] * 40)  # 200,000 trades: more than socket buffers hold
    port = free_port()
    with hub_on(f"ws://127.0.0.1:{port}", max_pending=20_000) as hub:
        fast = Session(hub, trades=["ES"])
        slow = ws_connect(hub.url, max_queue=4)  # subscribes, never reads
        slow.recv(timeout=5)
        slow.send(orjson.dumps({"action": "auth", "key": HUB_KEY, "secret": SECRET}).decode())
        slow.send('{"action":"subscribe","trades":["ES"]}')
        wait_for(lambda: len(hub._routes) == 2)
        with upstream(big, port=port) as alpaca:
            fast.ended()
        assert hub.stats.slow_cuts == 1
        frames = []  # what the slow one gets when it reads again: the backlog, then 407
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:
                frames.append(orjson.loads(slow.recv(timeout=10)))
    got = fast.data()
    assert len(got) == 200_000
    assert [m["i"] for m in got] == alpaca.table["trade_id"].to_pylist()  # the tape's order
    assert fast.closed == (1000, END_OF_REPLAY)
    assert frames[-1] == [{"T": "error", "code": 407, "msg": "slow client"}]
    assert sum(len(f) for f in frames[2:-1]) < 200_000  # it fell behind and was left behind


class Sink:
    """A session's feed: cpquant's client through tradeday's StreamFeed, trades kept."""

    def __init__(self, hub: Hub, secret: str = SECRET) -> None:
        self.trades: list[Trade] = []
        self.feed = StreamFeed(
            hub.url,
            HUB_KEY,
            secret,
            ["ES"],
            Decoder(self._events, self._control),
            backoff_base=0.2,
            seed=2,
        )
        self.feed.start()

    def _events(self, events: list[Any]) -> None:
        self.trades += [e for e in events if isinstance(e, Trade)]

    def _control(self, message: dict) -> None:
        self.feed.on_control(message)


ROWS = list(zip(*(TRADES[c].to_pylist() for c in ("ts", "price", "size")), strict=True))


def a_subsequence_of_the_tape(trades: list[Trade]) -> bool:
    """Each trade matched to a later tape row than the one before: none doubled or reordered."""
    rows = iter(ROWS)
    return all(any(row == (t.ts, t.price, t.size) for row in rows) for t in trades)


def test_an_upstream_drop_reconnects_resubscribes_and_sessions_see_the_gap() -> None:
    with upstream(TRADES, faults=Faults(drop_after=2_000)) as alpaca, hub_on(alpaca.url) as hub:
        sessions = [Sink(hub), Sink(hub)]
        for s in sessions:
            assert s.feed.ended.wait(60)
            s.feed.stop()
        assert alpaca.stats.drops == 1 and alpaca.stats.authenticated == 2
        assert hub.upstream.stats.reconnects == 1 and hub.stats.upstream_losses == 1
        assert hub.upstream_confirmed["trades"] == ["ES"]  # resubscribed after the drop
    for s in sessions:
        assert s.feed.end_reason == "end of data" and s.feed.error is None
        assert s.feed.stats.reconnects == 1  # the gap, counted by the session itself
        got = [(t.ts, t.price, t.size) for t in s.trades]
        assert got[:2_000] == ROWS[:2_000]  # everything before the drop, then closed
        assert got[-1] == ROWS[-1] and a_subsequence_of_the_tape(s.trades)


def test_a_refused_upstream_406_is_retried_until_the_old_connection_lets_go() -> None:
    with upstream(TRADES, max_connections=1) as alpaca:
        lingering = ws_connect(alpaca.url)
        lingering.recv(timeout=5)
        lingering.send(
            orjson.dumps({"action": "auth", "key": ALPACA_KEY, "secret": ALPACA_SECRET}).decode()
        )
        lingering.recv(timeout=5)
        with hub_on(alpaca.url) as hub:
            session = Sink(hub)
            wait_for(lambda: hub.upstream.stats.refused >= 2)
            lingering.close()
            assert session.feed.ended.wait(60)
            session.feed.stop()
            assert hub.failure is None
    assert len(session.trades) == 5_000 and session.feed.error is None


def test_406_beyond_the_retry_window_stops_the_hub_with_the_reason() -> None:
    with upstream(TRADES, max_connections=1) as alpaca:
        lingering = ws_connect(alpaca.url)
        lingering.recv(timeout=5)
        lingering.send(
            orjson.dumps({"action": "auth", "key": ALPACA_KEY, "secret": ALPACA_SECRET}).decode()
        )
        lingering.recv(timeout=5)
        with hub_on(alpaca.url, retry_refused_s=0.3) as hub:
            wait_for(lambda: hub.failure is not None)
            assert isinstance(hub.failure, FeedError) and "406" in str(hub.failure)
            wait_for(lambda: not hub.running)
        lingering.close()


def test_a_wrong_local_secret_gets_402_and_the_alpaca_keys_are_not_the_local_ones() -> None:
    with upstream(speed=1e-6) as alpaca, hub_on(alpaca.url) as hub:
        intruder = Sink(hub, secret=ALPACA_SECRET)
        assert intruder.feed.ended.wait(20)
        assert isinstance(intruder.feed.error, FeedError) and "402" in str(intruder.feed.error)
        assert hub.stats.errors[402] == 1 and intruder.feed.stats.connects == 1  # no retries
    with pytest.raises(ValueError, match="must not be the Alpaca secret"):
        Hub("ws://127.0.0.1:1", ALPACA_KEY, ALPACA_SECRET, secret=ALPACA_SECRET)
    with pytest.raises(ValueError, match="TRADEDAY_HUB_SECRET"):
        Hub("ws://127.0.0.1:1", ALPACA_KEY, ALPACA_SECRET, secret="")
    with pytest.raises(ValueError, match="loopback"):
        Hub("ws://127.0.0.1:1", ALPACA_KEY, ALPACA_SECRET, secret=SECRET, host="0.0.0.0")


def run_hub_cli(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "tradeday"), "hub", *args],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def test_tradeday_hub_command_serves_sessions_and_logs_no_keys() -> None:
    port = free_port()
    with upstream(TRADES) as alpaca:
        proc = run_hub_cli(
            "--upstream-url",
            alpaca.url,
            "--port",
            str(port),
            TRADEDAY_HUB_SECRET=SECRET,
            APCA_API_KEY_ID=ALPACA_KEY,
            APCA_API_SECRET_KEY=ALPACA_SECRET,
        )
        try:
            assert proc.stderr is not None
            line = ""
            while "hub on" not in line and proc.poll() is None:
                line = proc.stderr.readline()
            assert f"hub on ws://127.0.0.1:{port}/v2/hub, upstream {alpaca.url}" in line, line
            client = open_client(f"ws://127.0.0.1:{port}", HUB_KEY, SECRET)
            frames: list[str] = []
            client.subscribe_trades(["ES"])
            client.listen(frames.append)
            got = [m for f in frames for m in orjson.loads(f) if m["T"] == "t"]
            assert len(got) == 5_000 and client.socket.close_reason == END_OF_REPLAY
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            log = line + proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    assert "hub stopped: sessions=0 messages_in=5000 sent=5000" in log
    assert ALPACA_KEY not in log and ALPACA_SECRET not in log and SECRET not in log


def test_tradeday_hub_command_names_what_is_missing() -> None:
    proc = run_hub_cli(TRADEDAY_HUB_SECRET="")
    assert proc.wait(60) == 1
    assert proc.stderr is not None and "set TRADEDAY_HUB_SECRET" in proc.stderr.read()
    proc = run_hub_cli("--port", "nope")
    assert proc.wait(60) == 2
    assert proc.stderr is not None and "--port: invalid int value: 'nope'" in proc.stderr.read()


def test_the_hub_records_each_day_and_the_recording_replays_what_sessions_got(
    tmp_path: Path,
) -> None:
    port = free_port()
    with hub_on(f"ws://127.0.0.1:{port}", recorder=Recorder(tmp_path, flush_s=0.2)) as hub:
        a = Session(hub, trades=["ES"])
        b = Session(hub, bars=["AAPL", "MSFT"])
        wait_for(lambda: len(hub._routes) == 2)
        with upstream(port=port):
            a.ended()
            b.ended()
    assert hub.recorder is not None and hub.recorder.stats.failed_writes == 0
    # a folder per New York day: the ES trades' day and the two days the bars span
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2013-09-03", "2023-01-03", "2023-01-04"]
    trades_day = recording.load(tmp_path / "2013-09-03")
    bars = [recording.load(tmp_path / d) for d in ("2023-01-03", "2023-01-04")]
    assert messages(trades_day, Format.JSON) == a.data() == expected({"t": ["ES"]})
    assert messages(pa.concat_tables(bars), Format.JSON) == b.data()
    assert b.data() == expected({"b": ["AAPL", "MSFT"]})
    assert not list(tmp_path.glob("*/.*"))  # no half-written part left behind
    with ReplayServer(tmp_path / "2013-09-03") as replay:  # the live day, replayed
        client = open_client(replay.url, "replay", "replay")
        frames: list[str] = []
        client.subscribe_trades(["ES"])
        client.listen(frames.append)
    assert [m for f in frames for m in orjson.loads(f) if m["T"] == "t"] == a.data()


def test_a_killed_hub_keeps_a_readable_recording_of_what_it_flushed(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import sys; from tradeday.hub.main import main; from tradeday.wiring import Credentials; "
        f"sys.exit(main(sys.argv[1:], lambda: Credentials({ALPACA_KEY!r}, {ALPACA_SECRET!r})))"
    )
    with upstream(TRADES, speed=5.0) as alpaca:  # 57 s of trades in about 11 s
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "--upstream-url",
                alpaca.url,
                "--port",
                str(port),
                "--record-dir",
                str(tmp_path),
                "--record-every-s",
                "0.2",
            ],
            env={**os.environ, "TRADEDAY_HUB_SECRET": SECRET},
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: proc.poll() is None and _listening(port), 120)
            client = open_client(f"ws://127.0.0.1:{port}", HUB_KEY, SECRET)
            client.subscribe_trades(["ES"])
            day = tmp_path / "2013-09-03"
            wait_for(lambda: alpaca.stats.sent >= 1_500 and any(day.glob("[!.]*.parquet")), 60)
            proc.kill()  # no flush at exit: only what the 0.2 s writes had already put down
            proc.wait(10)
        finally:
            proc.kill()
            proc.wait()
        client.close()
    kept = recording.load(tmp_path / "2013-09-03")
    assert 0 < kept.num_rows < 5_000
    assert messages(kept, Format.JSON) == messages(TRADES.slice(0, kept.num_rows), Format.JSON)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_session_taking_the_union_past_the_symbol_limit_gets_405_alone() -> None:
    with upstream(speed=1e-6) as alpaca, hub_on(alpaca.url, symbol_limit=3) as hub:
        a = Session(hub, trades=["ES", "NQ"])
        b = Session(hub, trades=["ES"], quotes=["NQ"])  # the same two symbols: fits
        wait_for(lambda: hub.upstream_confirmed["quotes"] == ["NQ"])
        c = Session(hub, bars=["AAPL", "MSFT"])  # four symbols in the union: refused
        wait_for(lambda: any(m.get("code") == 405 for m in c.control()))
        assert hub.upstream_confirmed == {"trades": ["ES", "NQ"], "quotes": ["NQ"], "bars": []}
        c.client.subscribe_bars(["AAPL"], "1Min")  # three: accepted
        wait_for(lambda: hub.upstream_confirmed["bars"] == ["AAPL"])
        for s in (a, b, c):
            s.leave()
    assert c.control()[-2:] == [
        {"T": "error", "code": 405, "msg": "symbol limit exceeded"},
        {"T": "subscription", "trades": [], "quotes": [], "bars": ["AAPL"]},
    ]


def test_alpaca_py_msgpack_session_through_the_hub_parses_every_trade() -> None:
    from alpaca.data.live import StockDataStream

    port = free_port()
    with hub_on(f"ws://127.0.0.1:{port}") as hub:
        stream = StockDataStream(HUB_KEY, SECRET, url_override=hub.url)  # msgpack frames
        trades: list[Any] = []

        async def on_trade(trade: Any) -> None:
            trades.append(trade)
            if len(trades) == TRADES.num_rows:
                await stream.stop_ws()

        stream.subscribe_trades(on_trade, "ES")
        runner = threading.Thread(target=stream.run, daemon=True)
        runner.start()
        wait_for(lambda: len(hub._routes) == 1)
        with upstream(TRADES, port=port):
            runner.join(60)
        assert not runner.is_alive()
    assert [t.id for t in trades] == TRADES["trade_id"].to_pylist()
    assert [t.timestamp for t in trades][:1] == [datetime(2013, 9, 3, 13, 30, 0, 40000, tzinfo=UTC)]
