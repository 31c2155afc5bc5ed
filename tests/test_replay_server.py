"""The Alpaca v2 replay server, driven by the real clients over real websockets."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import orjson
import pyarrow as pa
import pytest
import websockets.sync.client
from cpquant.data import AlpacaRealtimeClient
from websockets.exceptions import ConnectionClosed

from tradeday import recording
from tradeday.replay import END_OF_REPLAY, Faults, ReplayServer, protocol
from tradeday.replay.wire import Block, Format, messages, parse_rfc3339, rfc3339

FIXTURE = Path(__file__).parent / "fixtures" / "es-2013-09-03-open.parquet"
TABLE = recording.load(FIXTURE)
IDS = TABLE["trade_id"].to_pylist()
TS = TABLE["ts"].to_pylist()


@contextmanager
def server(data: Any = FIXTURE, **options: Any) -> Iterator[ReplayServer]:
    """A started server, always stopped (a leaked thread would hold the port and the loop)."""
    srv = ReplayServer(data, **options).start()
    try:
        yield srv
    finally:
        srv.stop()
        assert srv._thread is not None and not srv._thread.is_alive()


def cpquant_client(
    srv: ReplayServer, monkeypatch: pytest.MonkeyPatch, key: str = "replay"
) -> AlpacaRealtimeClient:
    """cpquant's live client, redirected from Alpaca to ``srv`` while its __init__ connects."""
    monkeypatch.setenv("ALPACA_DATA_PUBLIC_KEY", key)
    monkeypatch.setenv("ALPACA_DATA_SECRET_KEY", "replay")
    real = websockets.sync.client.connect
    with mock.patch.object(
        websockets.sync.client, "connect", lambda _url, **kw: real(srv.url, **kw)
    ):
        return AlpacaRealtimeClient()


def listen(client: AlpacaRealtimeClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run cpquant's listen loop to the end: (control messages, data messages)."""
    frames: list[str] = []
    client.listen(frames.append)
    messages = [m for f in frames for m in orjson.loads(f)]
    data = [m for m in messages if m["T"] in ("t", "q", "b")]
    return [m for m in messages if m["T"] not in ("t", "q", "b")], data


def raw(srv: ReplayServer, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(srv.url, **kwargs)


def recv(ws: websockets.sync.client.ClientConnection) -> list[dict[str, Any]]:
    frame = ws.recv(timeout=5)
    return msgpack.unpackb(frame) if isinstance(frame, bytes) else orjson.loads(frame)


def authed(srv: ReplayServer, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    ws = raw(srv, **kwargs)
    assert recv(ws) == [{"T": "success", "msg": "connected"}]
    ws.send(orjson.dumps({"action": "auth", "key": "replay", "secret": "replay"}).decode())
    assert recv(ws) == [{"T": "success", "msg": "authenticated"}]
    return ws


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def error(code: int, msg: str) -> list[dict[str, Any]]:
    return [{"T": "error", "code": code, "msg": msg}]


def test_cpquant_client_gets_every_trade_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    with server() as srv:
        client = cpquant_client(srv, monkeypatch)
        client.subscribe_trades(["ES"])
        control, data = listen(client)
        assert control == [
            {"T": "success", "msg": "connected"},
            {"T": "success", "msg": "authenticated"},
            {"T": "subscription", "trades": ["ES"], "quotes": [], "bars": []},
        ]
        assert [m["i"] for m in data] == IDS
        assert [parse_rfc3339(m["t"]) for m in data] == TS
        assert data[0] == {
            "T": "t",
            "S": "ES",
            "i": 141_997,
            "x": "CME",
            "p": 1646.5,
            "s": 21,
            "c": [],
            "z": None,
            "t": "2013-09-03T13:30:00.040000000Z",
        }
        assert (client.socket.close_code, client.socket.close_reason) == (1000, END_OF_REPLAY)
        assert srv.stats.messages == {"t": 5000, "q": 0, "b": 0}
        assert srv.stats.frames == 50  # batch=100
        assert srv.stats.finished


def test_rfc3339_has_nine_digits() -> None:
    assert rfc3339(1_378_215_000_040_000_001) == "2013-09-03T13:30:00.040000001Z"
    assert parse_rfc3339("2013-09-03T13:30:00.040000001Z") == 1_378_215_000_040_000_001
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", rfc3339(0))


def test_msgpack_frames_when_client_asks() -> None:
    with server(batch=7) as srv:
        ws = raw(srv, additional_headers={"Content-Type": "application/msgpack"})
        assert recv(ws) == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "auth", "key": "replay", "secret": "replay"}))
        assert recv(ws) == [{"T": "success", "msg": "authenticated"}]
        ws.send(msgpack.packb({"action": "subscribe", "trades": ["*"]}))
        assert recv(ws) == [{"T": "subscription", "trades": ["*"], "quotes": [], "bars": []}]
        frames = [ws.recv(timeout=5) for _ in range(715)]  # 5000 = 714 * 7 + 2
        assert all(isinstance(f, bytes) for f in frames)
        data = [m for f in frames for m in msgpack.unpackb(f, timestamp=0)]
        assert [m["i"] for m in data] == IDS
        assert isinstance(data[0]["t"], msgpack.Timestamp)
        assert [m["t"].to_unix_nano() for m in data] == TS
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_reason == END_OF_REPLAY


def test_alpaca_py_stream_parses_every_trade() -> None:
    from alpaca.data.live import StockDataStream

    with server() as srv:
        stream = StockDataStream("replay", "replay", url_override=srv.url)
        trades: list[Any] = []

        async def on_trade(trade: Any) -> None:
            trades.append(trade)
            if len(trades) == len(IDS):
                await stream.stop_ws()

        stream.subscribe_trades(on_trade, "ES")
        runner = threading.Thread(target=stream.run, daemon=True)
        runner.start()
        runner.join(20)
        assert not runner.is_alive()
        assert [t.id for t in trades] == IDS
        assert trades[0].symbol == "ES"
        assert trades[0].price == 1646.5
        assert trades[0].timestamp.isoformat() == "2013-09-03T13:30:00.040000+00:00"


def test_subscription_replies_hold_the_whole_set() -> None:
    with server(speed=1e-6) as srv:  # a crawling tape: the replay will not end meanwhile
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["NOPE"],"quotes":["A","B"],"bars":["*"]}')
        assert recv(ws) == [
            {"T": "subscription", "trades": ["NOPE"], "quotes": ["A", "B"], "bars": ["*"]}
        ]
        ws.send('{"action":"subscribe","quotes":["C"],"dailyBars":["A"],"timeframe":"1Min"}')
        assert recv(ws) == [
            {
                "T": "subscription",
                "trades": ["NOPE"],
                "quotes": ["A", "B", "C"],
                "bars": ["*"],
                "dailyBars": ["A"],
            }
        ]
        ws.send('{"action":"unsubscribe","trades":["NOPE"],"quotes":["B"],"bars":["*"]}')
        assert recv(ws) == [
            {
                "T": "subscription",
                "trades": [],
                "quotes": ["A", "C"],
                "bars": [],
                "dailyBars": ["A"],
            }
        ]
        ws.close()


def test_unmatched_subscription_runs_to_the_end_without_data() -> None:
    with server() as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["AAPL"]}')
        assert recv(ws)[0]["T"] == "subscription"
        with pytest.raises(ConnectionClosed):
            recv(ws)
        assert (ws.close_code, ws.close_reason) == (1000, END_OF_REPLAY)
        assert srv.stats.sent == 0
        assert srv.stats.position == 5000
        ws2 = authed(srv)  # after the end: told at once, on subscribing
        ws2.send('{"action":"subscribe","trades":["ES"]}')
        assert recv(ws2)[0]["T"] == "subscription"
        with pytest.raises(ConnectionClosed):
            recv(ws2)
        assert ws2.close_reason == END_OF_REPLAY


def test_error_codes() -> None:
    with server(symbol_limit=2, auth_timeout=0.15, speed=1e-6) as srv:
        ws = raw(srv)
        recv(ws)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        assert recv(ws) == error(401, "not authenticated")
        ws.send("not json")
        assert recv(ws) == error(400, "invalid syntax")
        ws.send('{"action":"auth","key":"replay","secret":"wrong"}')
        assert recv(ws) == error(402, "auth failed")
        ws.send('{"action":"auth","key":"replay","secret":"replay"}')
        assert recv(ws) == [{"T": "success", "msg": "authenticated"}]
        ws.send('{"action":"auth","key":"replay","secret":"replay"}')
        assert recv(ws) == error(403, "already authenticated")
        ws.send('{"action":"dance"}')
        assert recv(ws) == error(400, "invalid syntax")
        ws.send('{"action":"subscribe","trades":"ES"}')
        assert recv(ws) == error(400, "invalid syntax")
        ws.send('{"action":"subscribe","trades":["A","B","C"]}')
        assert recv(ws) == error(405, "symbol limit exceeded")
        ws.send('{"action":"subscribe","trades":["A"],"quotes":["A","B"]}')  # 2 distinct
        assert recv(ws)[0]["T"] == "subscription"

        second = raw(srv)  # connection limit is 1 authenticated connection
        recv(second)
        second.send('{"action":"auth","key":"replay","secret":"replay"}')
        assert recv(second) == error(406, "connection limit exceeded")
        with pytest.raises(ConnectionClosed):
            recv(second)

        late = raw(srv)  # never authenticates
        recv(late)
        assert recv(late) == error(404, "auth timeout")
        with pytest.raises(ConnectionClosed):
            recv(late)
        ws.close()
        assert srv.stats.errors == {400: 3, 401: 1, 402: 1, 403: 1, 404: 1, 405: 1, 406: 1}


def test_tape_waits_while_nobody_is_subscribed(monkeypatch: pytest.MonkeyPatch) -> None:
    end = TS[0] + 3_000_000_000  # paced, so little is in flight when the client leaves
    window = [i for i, t in zip(IDS, TS, strict=True) if t < end]
    with server(speed=10.0, end_ns=end, batch=10) as srv:
        # max_queue=None: a websockets sync client that stops reading with a full queue can
        # not see the close handshake complete and waits out its 10 s close timeout
        ws = authed(srv, max_queue=None)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        recv(ws)
        first = [m for _ in range(5) for m in recv(ws)]
        ws.close()
        wait_for(lambda: srv.stats.active == 0)
        position = srv.stats.position
        time.sleep(0.15)
        assert srv.stats.position == position < len(window)  # the tape waited
        client = cpquant_client(srv, monkeypatch)
        client.subscribe_trades(["ES"])
        _, second = listen(client)
        ids = [m["i"] for m in first + second]
        assert ids[:50] == window[:50]
        assert ids == sorted(set(ids))  # never repeated, never out of order
        assert ids[-1] == window[-1]
        assert len(window) - len(ids) <= position - 50  # lost: only what was in flight


def test_drop_fault_and_reconnect_deliver_everything_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with server(faults=Faults(drop_after=1234, drop_every=1500)) as srv:
        received: list[dict[str, Any]] = []
        closes = []
        for _ in range(10):
            client = cpquant_client(srv, monkeypatch)
            client.subscribe_trades(["ES"])
            received += listen(client)[1]
            closes.append((client.socket.close_code, client.socket.close_reason))
            if client.socket.close_reason == END_OF_REPLAY:
                break
        assert closes == [(1006, "")] * 3 + [(1000, END_OF_REPLAY)]  # at 1234, 2734, 4234
        assert [m["i"] for m in received] == IDS
        assert srv.stats.drops == 3
        assert srv.stats.connections == 4


def test_drop_counts_are_exact() -> None:
    with server(faults=Faults(drop_after=250)) as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        recv(ws)
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed):
            while True:
                got += recv(ws)
        assert [m["i"] for m in got] == IDS[:250]
        assert ws.close_code == 1006  # no close frame: an abrupt drop
        time.sleep(0.1)
        assert srv.stats.position == 250  # and the tape stands right after the drop


def test_silent_fault_pauses_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    with server(faults=Faults(silent_after=1000, silent_for=0.3)) as srv:
        client = cpquant_client(srv, monkeypatch)
        client.subscribe_trades(["ES"])
        arrivals: list[tuple[float, str]] = []
        client.listen(lambda frame: arrivals.append((time.monotonic(), frame)))
        counts, gap_after = 0, {}
        for (t0, _), (t1, frame) in itertools.pairwise(arrivals):
            gap_after[counts] = t1 - t0  # wait before the frame following message `counts`
            counts += sum(1 for m in orjson.loads(frame) if m["T"] == "t")
        assert gap_after[1000] >= 0.28
        assert counts == 5000
        assert srv.stats.silences == 1


def test_malformed_frames_are_injected_once() -> None:
    variants = ("truncated", "unknown_type", "missing_fields", "non_monotonic")
    faults = Faults(malformed_after=30, malformed=variants)
    with server(TABLE.slice(0, 60), faults=faults, batch=20) as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        recv(ws)
        frames = [ws.recv(timeout=5) for _ in range(6)]
        assert [len(orjson.loads(f)) for f in frames[:2]] == [20, 10]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(frames[2])
        assert orjson.loads(frames[3]) == [
            {"T": "zz", "S": "ES", "t": rfc3339(TS[29])},
        ]
        assert orjson.loads(frames[4]) == [{"T": "t", "S": "ES"}]
        (stale,) = orjson.loads(frames[5])
        assert stale["i"] == IDS[29]
        assert parse_rfc3339(stale["t"]) == TS[29] - 1_000_000_000
        assert [m["i"] for m in recv(ws) + recv(ws)] == IDS[30:60]
        with pytest.raises(ConnectionClosed):
            recv(ws)
        assert srv.stats.malformed == 4


def test_speed_paces_by_tick_time() -> None:
    start, end = TS[0], TS[0] + 2_000_000_000
    expected = sum(1 for t in TS if t < end)
    with server(speed=8.0, start_ns=start, end_ns=end) as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        recv(ws)
        began = time.monotonic()
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed):
            while True:
                got += recv(ws)
        elapsed = time.monotonic() - began
        assert len(got) == expected
        assert 0.18 <= elapsed < 3.0  # last trade is ~1.9 s of tick time after the first: /8


def test_bars_of_several_symbols_merge_in_time_order() -> None:
    bars = recording.bundled(date(2023, 1, 3))
    start = 1_672_756_200_000_000_000  # 2023-01-03 14:30 UTC = 09:30 New York
    with server(bars, start_ns=start, end_ns=start + 5 * 60_000_000_000) as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","bars":["*"]}')
        recv(ws)
        got = recv(ws)
        assert len(got) == 20  # 4 symbols x 5 minutes
        assert [m["t"] for m in got] == sorted(m["t"] for m in got)
        assert {m["S"] for m in got[:4]} == {"AAPL", "MSFT", "NVDA", "IBM"}
        aapl = next(m for m in got if m["S"] == "AAPL")
        assert aapl == {
            "T": "b",
            "S": "AAPL",
            "o": 129.76819,
            "h": 129.87001,
            "l": 129.45999,
            "c": 129.65001,
            "v": 463769,
            "n": None,
            "vw": None,
            "t": "2023-01-03T14:30:00.000000000Z",
        }
        ws.close()


def test_quotes_and_kind_filtering() -> None:
    table = pa.table(
        {
            "ts": [1, 2, 3],
            "symbol": ["SPY", "SPY", "QQQ"],
            "kind": ["q", "t", "q"],
            "bid_price": [1.0, None, 3.0],
            "bid_size": [10, None, 30],
            "ask_price": [1.5, None, 3.5],
            "ask_size": [15, None, 35],
            "bid_exchange": ["V", None, "Q"],
            "ask_exchange": ["P", None, "Q"],
            "price": [None, 1.2, None],
            "size": [None, 100, None],
            "conditions": [["R"], ["@"], None],
            "tape": ["B", "B", "C"],
        }
    )
    with server(table) as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","quotes":["SPY"]}')
        recv(ws)
        got = recv(ws)
        assert got == [
            {
                "T": "q",
                "S": "SPY",
                "bx": "V",
                "bp": 1.0,
                "bs": 10,
                "ax": "P",
                "ap": 1.5,
                "as": 15,
                "c": ["R"],
                "z": "B",
                "t": "1970-01-01T00:00:00.000000001Z",
            }
        ]
        with pytest.raises(ConnectionClosed):
            recv(ws)


def test_stop_closes_clients_and_is_idempotent() -> None:
    srv = ReplayServer(FIXTURE).start()
    ws = authed(srv)
    srv.stop()
    srv.stop()
    with pytest.raises(ConnectionClosed):
        recv(ws)
    assert ws.close_code == 1001


def test_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        ReplayServer(FIXTURE, host="0.0.0.0")
    with pytest.raises(ValueError, match="speed"):
        ReplayServer(FIXTURE, speed=0)
    with pytest.raises(ValueError, match="drop_after"):
        Faults(drop_after=0)


def test_serve_forever_until_sigterm() -> None:
    """Also checks, in a fresh interpreter, that the engine never imports Prefect."""
    code = (
        "import sys; from tradeday.replay import serve_forever; "
        f"serve_forever({str(FIXTURE)!r}, port=0); "
        "sys.exit(3 if 'prefect' in sys.modules else 0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"ws://\S+", line)
        assert url, line
        with websockets.sync.client.connect(url.group()) as ws:
            assert orjson.loads(ws.recv(timeout=5)) == [{"T": "success", "msg": "connected"}]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_server_loop_is_private_to_its_thread() -> None:
    """A caller inside its own event loop (Prefect, Jupyter) can still run a server."""

    async def inside_a_loop() -> int:
        with server() as srv:
            ws = await asyncio.to_thread(authed, srv)
            ws.close()
            return srv.stats.authenticated

    assert asyncio.run(inside_a_loop()) == 1


def test_stop_cuts_a_client_that_stopped_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "STOP_GRACE", 0.2)
    big = pa.concat_tables([TABLE] * 20)  # more than socket buffers hold
    srv = ReplayServer(big).start()
    ws = authed(srv)
    ws.send('{"action":"subscribe","trades":["ES"]}')
    wait_for(lambda: srv.stats.sent > 0)
    time.sleep(0.1)
    began = time.monotonic()
    srv.stop()
    assert time.monotonic() - began < 3.0  # not the 10 s websockets close timeout
    assert 0 < srv.stats.position < big.num_rows  # backpressure held the tape back
    with pytest.raises(ConnectionClosed):  # drain, so the client's reader thread can end
        while True:
            ws.recv(timeout=5)


def test_json_encoding_matches_orjson_of_message_dicts() -> None:
    table = recording.conform(
        pa.table(
            {
                "ts": [5, 1_700_000_000_123_456_789, 7, 7],
                "symbol": ['O"DD\\', "SPY", "SPY", "BRK.B"],
                "kind": ["t", "q", "b", "t"],
                "price": [float("nan"), None, None, 1e21],
                "size": [1, None, None, 2**40],
                "bid_price": [None, 1e-7, None, None],
                "bid_size": [None, 0, None, None],
                "ask_price": [None, 123456789.12345679, None, None],
                "ask_size": [None, 3, None, None],
                "bid_exchange": [None, "V", None, None],
                "ask_exchange": [None, None, None, None],
                "open": [None, None, 1.0, None],
                "high": [None, None, 2.5, None],
                "low": [None, None, float("inf"), None],
                "close": [None, None, 2.0, None],
                "volume": [None, None, 10, None],
                "trade_count": [None, None, 3, None],
                "vwap": [None, None, 1.75, None],
                "conditions": [["@", "T"], [], None, ["é"]],
                "exchange": ["Q", None, None, "N"],
                "trade_id": [1, None, None, 2],
                "tape": ["A", "B", None, "C"],
            }
        )
    )
    block = Block(table, 0, table.num_rows)
    fast = [orjson.loads(m) for m in block.encoded(Format.JSON)]
    slow = [orjson.loads(orjson.dumps(m)) for m in messages(table, Format.JSON)]
    assert fast == slow
    assert [list(m) for m in fast] == [list(m) for m in slow]  # same field order
    packed = [msgpack.unpackb(m) for m in block.encoded(Format.MSGPACK)]
    assert [m["t"].to_unix_nano() for m in packed] == [parse_rfc3339(m["t"]) for m in slow]
    assert [{**m, "t": 0} for m in packed] == [{**m, "t": 0} for m in slow]


def test_empty_window_ends_at_once() -> None:
    with server(start_ns=TS[-1] + 1) as srv:
        assert srv.stats.events == 0
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["*"]}')
        recv(ws)
        with pytest.raises(ConnectionClosed):
            recv(ws)
        assert ws.close_reason == END_OF_REPLAY


def test_two_clients_share_one_tape() -> None:
    with server(max_connections=2, speed=1e-6) as srv:
        a, b = authed(srv), authed(srv)
        a.send('{"action":"subscribe","trades":["ES"]}')
        recv(a)
        assert recv(a)[0]["i"] == IDS[0]  # the crawling tape gave out the first print(s)
        opening = TS.count(TS[0])  # trades stamped with the very first millisecond
        wait_for(lambda: srv.stats.sent == opening)
        b.send('{"action":"subscribe","trades":["ES"]}')
        recv(b)
        time.sleep(0.1)
        assert srv.stats.sent == opening  # the second client joins the market where it stands
        a.close()
        b.close()


def test_a_tape_bug_is_reported_not_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Block, fmt: Format) -> list[bytes]:
        raise RuntimeError("boom")

    monkeypatch.setattr(Block, "encoded", broken)
    with server() as srv:
        ws = authed(srv)
        ws.send('{"action":"subscribe","trades":["ES"]}')
        recv(ws)
        assert recv(ws) == error(500, "internal error")
        with pytest.raises(ConnectionClosed):
            recv(ws)
        assert ws.close_code == 1001


def test_the_cli_sets_credentials_limits_and_faults() -> None:
    from tests.conftest import BIN

    options = ["--key", "fake-key-cli", "--secret", "cli-secret", "--max-connections", "2"]
    options += ["--symbol-limit", "1", "--drop-after", "250", "--auth-timeout", "5"]
    proc = subprocess.Popen(
        [str(BIN / "tradeday"), "replay-server", "--data", str(FIXTURE), "--port", "0", *options],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"ws://\S+", line)
        assert url, line

        def connect(key: str, secret: str) -> tuple[Any, list[dict[str, Any]]]:
            ws = websockets.sync.client.connect(url.group())
            assert recv(ws) == [{"T": "success", "msg": "connected"}]
            ws.send(orjson.dumps({"action": "auth", "key": key, "secret": secret}).decode())
            return ws, recv(ws)

        wrong, answer = connect("replay", "replay")  # the defaults no longer open it
        assert answer == error(402, "auth failed")
        first, answer = connect("fake-key-cli", "cli-secret")
        assert answer == [{"T": "success", "msg": "authenticated"}]
        second, answer = connect("fake-key-cli", "cli-secret")  # two allowed
        assert answer == [{"T": "success", "msg": "authenticated"}]
        third, answer = connect("fake-key-cli", "cli-secret")
        assert answer == error(406, "connection limit exceeded")
        first.send('{"action":"subscribe","trades":["ES","NQ"]}')
        assert recv(first) == error(405, "symbol limit exceeded")
        first.send('{"action":"subscribe","trades":["ES"]}')
        assert recv(first)[0]["T"] == "subscription"
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed):
            while True:
                got += recv(first)
        assert [m["i"] for m in got] == IDS[:250] and first.close_code == 1006
        for ws in (wrong, second, third):
            ws.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--max-connections", "0"],
            "Invalid value for '--max-connections': Input should be greater than or equal to 1",
        ),
        (
            ["--malformed", "nope", "--malformed-after", "5"],
            "Invalid value for '--malformed': 'nope' is not one of truncated, unknown_type, missing_fields, non_monotonic",
        ),
        (
            ["--malformed", "truncated"],
            "Invalid value for '--malformed': --malformed needs --malformed-after N",
        ),
        (
            ["--silent-for", "2"],
            "Invalid value for '--silent-for': --silent-for needs --silent-after N",
        ),
    ],
)
def test_the_cli_names_a_bad_option_and_the_fix(args: list[str], says: str, capsys) -> None:
    from tradeday.cli import main

    assert main(["replay-server", "--data", str(FIXTURE), *args]) == 2
    err = capsys.readouterr().err
    assert says in " ".join(w for w in err.split() if w not in "│╭╮╰╯─")  # out of rich's box
