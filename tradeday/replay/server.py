"""An Alpaca market-data v2 stream server that replays a recording, for offline sessions.

It speaks the real protocol (connected / auth / subscribe / errors 400-406, JSON or
msgpack frames, batched data messages), so the very client used live (cpquant's
``AlpacaRealtimeClient``, or alpaca-py's ``StockDataStream``) runs unchanged against it.
The handshake and subscriptions live in ``tradeday.replay.protocol`` (shared with the hub);
this module is the tape.

The tape. The server holds one replay position, like a live market: it does not restart
per connection. It advances only while at least one client is subscribed to something,
and a slow client slows it down (each send is awaited: websocket backpressure), so with
``speed=None`` it plays as fast as the slowest subscribed client reads. ``speed=N`` plays
at N times tick time. A client that drops and reconnects resumes where the tape stands;
only messages already handed to the dropped connection (its unsent partial frame and what
sat in socket buffers) are lost, as with a live feed. Unlike Alpaca (407 slow client),
the server sends no keepalive pings and never cuts a slow reader: backpressure throttles
the tape instead, which is what a replay wants.

End of data is tradeday's only extension to the protocol: after the last event the server
closes each subscribed connection with code 1000 and reason ``"end of replay"``, so a
client can tell the end of the recording from a dropped connection (code 1006 or other).
A client that subscribes after the end is closed the same way at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tradeday import recording
from tradeday.events import NS_PER_S
from tradeday.replay.protocol import (
    Connection,
    ServerStats,
    StreamServer,
)
from tradeday.replay.wire import Block, Format, frame, join, timestamp

log = logging.getLogger(__name__)

END_OF_REPLAY = "end of replay"
"""Close reason (with code 1000) marking the end of the recording: tradeday's extension."""

BLOCK = 4096
"""Rows decoded per step of the tape: large enough to amortise Arrow calls, small in memory."""
Malformed = Literal["truncated", "unknown_type", "missing_fields", "non_monotonic"]


@dataclass(frozen=True)
class Faults:
    """Failures to inject, so reconnect, staleness and parsing paths can be tested for real.

    Thresholds count data messages the server has sent, over all connections (the tape's
    count, not a per-connection one): a reconnecting client keeps meeting the faults like
    a flaky network, and tests stay exact, because a fault fires right after message N
    has been flushed and the tape then stands at message N+1.

    - ``drop_after=N``: after message N, close the TCP connection that got it, without a
      websocket close handshake (the client sees code 1006). ``drop_every=M`` repeats the
      drop every M messages after that (alone, it means the first drop is at M too).
    - ``silent_after=N``, ``silent_for=S``: after message N, send nothing for S seconds
      while keeping connections open (pings still answered): a stale "connected" stream.
    - ``malformed_after=N``: after message N, send one extra frame per entry of
      ``malformed``: ``truncated`` (half a frame: invalid JSON/msgpack), ``unknown_type``
      (``"T":"zz"``), ``missing_fields`` (only T and S), ``non_monotonic`` (a copy of
      message N stamped one second earlier). Extra frames are not counted as messages.
    """

    drop_after: int | None = None
    drop_every: int | None = None
    silent_after: int | None = None
    silent_for: float = 0.0
    malformed_after: int | None = None
    malformed: tuple[Malformed, ...] = ("truncated",)

    def __post_init__(self) -> None:
        for name in ("drop_after", "drop_every", "silent_after", "malformed_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.silent_for < 0:
            raise ValueError("silent_for must be >= 0")


@dataclass
class ReplayStats(ServerStats):
    """The tape's counters beside the connection counters; read them any time."""

    events: int = 0
    position: int = 0
    frames: int = 0
    messages: dict[str, int] = field(default_factory=lambda: {"t": 0, "q": 0, "b": 0})
    drops: int = 0
    silences: int = 0
    malformed: int = 0
    finished: bool = False

    @property
    def sent(self) -> int:
        """Data messages sent over all connections."""
        return sum(self.messages.values())


class _Client(Connection):
    """A connection's place on the tape: its pending messages and cached row selection."""

    def __init__(self, ws: ServerConnection, fmt: Format) -> None:
        super().__init__(ws, fmt)
        self.pending: list[bytes] = []
        self._selection: tuple[int, int, np.ndarray | None] = (-1, -1, None)

    def selection(self, block: Block) -> np.ndarray | None:
        """Rows of ``block`` this client takes (None: all), computed once per block."""
        if self._selection[:2] != (block.start, self.version):
            self._selection = (block.start, self.version, block.select(self.wanted))
        return self._selection[2]

    def rows(self, block: Block, j: int, k: int) -> np.ndarray:
        """Offsets in ``[j, k)`` of ``block`` this client takes."""
        rows = self.selection(block)
        if rows is None:
            return np.arange(j, k)
        return rows[np.searchsorted(rows, j) : np.searchsorted(rows, k)]


class ReplayServer(StreamServer):
    """Serve a recording over the Alpaca v2 stream protocol from a background thread.

    ``data`` is a recording path or a table in ``tradeday.recording.SCHEMA``, cut to
    ``start_ns <= ts < end_ns``. ``speed`` None plays as fast as clients read, N plays at
    N x tick time. ``batch`` data messages go in one frame. ``key``/``secret`` are what
    clients must authenticate with; ``max_connections`` authenticated connections at once
    (406 beyond); ``symbol_limit`` distinct symbols per connection (405 beyond);
    ``auth_timeout`` seconds to authenticate (404). ``faults`` injects failures. Only
    loopback hosts unless ``allow_remote``.

    Use as a context manager, or ``start()``/``stop()`` (a server runs once); ``url`` is
    where clients connect (any path is accepted); ``stats`` are live counters. See the
    module docstring for how the shared tape behaves.
    """

    path = "/v2/replay"
    thread_name = "replay-server"

    def __init__(
        self,
        data: str | Path | pa.Table,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        batch: int = 100,
        key: str = "replay",
        secret: str = "replay",
        max_connections: int = 1,
        symbol_limit: int | None = None,
        faults: Faults | None = None,
        auth_timeout: float = 10.0,
        allow_remote: bool = False,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        table = _select(data, start_ns, end_ns)
        super().__init__(
            host,
            port,
            key=key,
            secret=secret,
            max_connections=max_connections,
            symbol_limit=symbol_limit,
            auth_timeout=auth_timeout,
            allow_remote=allow_remote,
            stats=ReplayStats(events=len(table)),
        )
        self.stats: ReplayStats
        self.table = table
        self.speed = speed
        self.batch = batch
        self.faults = faults or Faults()
        self._wake: asyncio.Event | None = None
        self._subscribed: list[_Client] = []
        self._ending: set[asyncio.Task[None]] = set()
        self._sent = 0  # data messages handed to connections, the count faults go by
        self._drop_at = self.faults.drop_after or self.faults.drop_every
        self._silent_at = self.faults.silent_after
        self._malformed_at = self.faults.malformed_after
        self._anchor: tuple[float, int] | None = None  # (loop time, tick ns) for paced replay

    async def _prepare(self) -> None:
        self._wake = asyncio.Event()

    async def _background(self) -> None:
        await self._guarded_tape()

    def _connection(self, ws: ServerConnection, fmt: Format) -> _Client:
        return _Client(ws, fmt)

    def _subscription_changed(self, client: Connection) -> None:
        assert isinstance(client, _Client)
        if client.subscribed():
            if client not in self._subscribed:
                self._subscribed.append(client)
            assert self._wake is not None
            self._wake.set()
        elif client in self._subscribed:
            self._subscribed.remove(client)
            client.pending.clear()

    def _forget(self, client: Connection) -> bool:
        """Also take the client off the tape."""
        if not super()._forget(client):
            return False
        assert isinstance(client, _Client)
        client.pending.clear()
        if client in self._subscribed:
            self._subscribed.remove(client)
        return True

    # -- the tape ------------------------------------------------------------------------

    async def _guarded_tape(self) -> None:
        """On a bug in the tape, tell clients (500) and shut down rather than go mute."""
        try:
            await self._run_tape()
        except Exception:
            log.exception("replay tape failed; stopping the replay server")
            for client in tuple(self._clients):
                with contextlib.suppress(ConnectionClosed):
                    await self._error(client, 500)
            self._request_stop()

    async def _run_tape(self) -> None:
        """Walk the recording once, in ranges of events that are due, for all subscribers."""
        table = self.table
        for start in range(0, len(table), BLOCK):
            block = Block(table, start, min(start + BLOCK, len(table)))
            j = 0
            while j < len(block):
                if not self._subscribed:
                    await self._until_subscribed()
                k = len(block) if self.speed is None else await self._due(block, j)
                if k == j:
                    continue
                k, target = self._cut_at_fault(block, j, k)
                for client in tuple(self._subscribed):
                    self._take(client, block, j, k)
                self.stats.position = start + k
                for client in tuple(self._subscribed):
                    while len(client.pending) >= self.batch:
                        await self._flush(client, self.batch)
                if target is not None:
                    await self._fire_faults(target, block, k - 1)
                j = k
            await asyncio.sleep(0)  # sends rarely yield: let control messages and stop() in
        await self._flush_all()
        self.stats.finished = True
        while True:  # whoever is (or later gets) subscribed learns the replay is over
            for client in tuple(self._subscribed):
                self._forget(client)
                task = asyncio.create_task(self._end(client))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)
            await self._until_subscribed()

    async def _until_subscribed(self) -> None:
        assert self._wake is not None
        while not self._subscribed:
            self._wake.clear()
            await self._wake.wait()
        self._anchor = None  # a paused tape resumes at its own pace, without a burst

    async def _due(self, block: Block, j: int) -> int:
        """End of the range of events due now at ``speed``; first waits for event ``j``."""
        assert self.speed is not None
        now = asyncio.get_running_loop().time
        if self._anchor is None:
            self._anchor = (now(), int(block.ts[j]))
        wall, tick = self._anchor
        rate = self.speed * NS_PER_S
        late = int(block.ts[j]) - (tick + int((now() - wall) * rate))
        if late > 0:
            await self._flush_all()
            await asyncio.sleep(late / rate)
            if not self._subscribed or self._anchor is None:
                return j  # paused or silenced meanwhile: the tape re-anchors
        due = tick + int((now() - wall) * rate)
        return max(j + 1, int(np.searchsorted(block.ts, due, side="right")))

    def _next_fault(self) -> int | None:
        due = [at for at in (self._drop_at, self._silent_at, self._malformed_at) if at]
        return min(due) if due else None

    def _cut_at_fault(self, block: Block, j: int, k: int) -> tuple[int, _Client | None]:
        """Shorten ``[j, k)`` to end at the message a fault is due after, and name its client.

        Messages count in tape order, subscribers in subscription order within an event.
        """
        threshold = self._next_fault()
        if threshold is None:
            return k, None
        clients = tuple(self._subscribed)
        rows = [c.rows(block, j, k) for c in clients]
        offsets = np.concatenate(rows)
        need = threshold - self._sent
        if len(offsets) < need:
            return k, None
        owners = np.concatenate([np.full(len(r), n) for n, r in enumerate(rows)])
        nth = np.lexsort((owners, offsets))[need - 1]
        return int(offsets[nth]) + 1, clients[int(owners[nth])]

    def _take(self, client: _Client, block: Block, j: int, k: int) -> None:
        """Queue rows ``[j, k)`` the client subscribed to; frames go out ``batch`` at a time."""
        rows = client.selection(block)
        items = block.encoded(client.fmt)
        if rows is None:
            client.pending += items[j:k]
            kinds = block.kind_codes[j:k]
        else:
            rows = rows[np.searchsorted(rows, j) : np.searchsorted(rows, k)]
            client.pending += [items[i] for i in rows.tolist()]
            kinds = block.kind_codes[rows]
        self._sent += len(kinds)
        for kind, count in zip("tqb", np.bincount(kinds, minlength=3).tolist(), strict=False):
            self.stats.messages[kind] += count

    async def _fire_faults(self, client: _Client, block: Block, j: int) -> None:
        """Inject the faults due at the current count, ``client`` having just got row ``j``."""
        if self._malformed_at and self._sent >= self._malformed_at:
            self._malformed_at = None
            await self._flush(client)
            await self._inject_malformed(client, block, j)
        if self._silent_at and self._sent >= self._silent_at:
            self._silent_at = None
            await self._flush_all()
            self.stats.silences += 1
            await asyncio.sleep(self.faults.silent_for)
            self._anchor = None
        if self._drop_at and self._sent >= self._drop_at:
            every = self.faults.drop_every
            self._drop_at = self._drop_at + every if every else None
            await self._drop(client)

    async def _flush(self, client: _Client, count: int | None = None) -> None:
        """Send ``count`` pending messages (all by default) as one frame."""
        if not client.pending:
            return
        if count is None or count >= len(client.pending):
            items, client.pending = client.pending, []
        else:
            items, client.pending = client.pending[:count], client.pending[count:]
        try:
            await client.ws.send(join(items, client.fmt), text=client.fmt is Format.JSON)
            self.stats.frames += 1
        except ConnectionClosed:
            self._forget(client)

    async def _flush_all(self) -> None:
        for client in tuple(self._subscribed):
            while client.pending:
                await self._flush(client, self.batch)

    async def _drop(self, client: _Client) -> None:
        """Close the TCP connection with no close frame, after what was sent reaches it."""
        while client.pending and client.alive:
            await self._flush(client, self.batch)
        if not client.alive:
            return
        self._forget(client)
        self.stats.drops += 1
        client.ws.transport.close()  # flushes the socket buffer, then FIN: no close frame

    async def _inject_malformed(self, client: _Client, block: Block, j: int) -> None:
        fmt, ts = client.fmt, int(block.ts[j])
        kind, symbol = block.table["kind"][j].as_py(), block.table["symbol"][j].as_py()
        for variant in self.faults.malformed:
            if variant == "truncated":
                whole = join([block.encoded(fmt)[j]], fmt)
                data = whole[: len(whole) // 2]
            elif variant == "unknown_type":
                data = frame([{"T": "zz", "S": symbol, "t": timestamp(ts, fmt)}], fmt)
            elif variant == "missing_fields":
                data = frame([{"T": kind, "S": symbol}], fmt)
            else:
                data = frame([block.message(j, fmt, ts - NS_PER_S)], fmt)
            try:
                await client.ws.send(data, text=fmt is Format.JSON)
            except ConnectionClosed:
                self._forget(client)
                return
            self.stats.malformed += 1

    async def _end(self, client: _Client) -> None:
        """Close with 1000 "end of replay" once the client has read what was sent before.

        The pong proves the client read up to the ping, so the close frame behind it is not
        stuck behind a backlog and the close handshake cannot time out into data loss.
        """
        with contextlib.suppress(ConnectionClosed):
            await (await client.ws.ping())
            await client.ws.close(1000, END_OF_REPLAY)


def _select(data: str | Path | pa.Table, start_ns: int | None, end_ns: int | None) -> pa.Table:
    if not isinstance(data, pa.Table):
        return recording.load(data, start_ns=start_ns, end_ns=end_ns)
    table = recording.conform(data)
    if start_ns is not None:
        table = table.filter(pc.greater_equal(table["ts"], start_ns))
    if end_ns is not None:
        table = table.filter(pc.less(table["ts"], end_ns))
    return table


def serve_forever(
    data: str | Path | pa.Table,
    port: int = 8765,
    speed: float | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    host: str = "127.0.0.1",
    **options: Any,
) -> None:
    """Run a replay server in the foreground until Ctrl-C or SIGTERM (the CLI's entry).

    ``options`` are passed to ``ReplayServer`` (key, secret, batch, faults, ...).
    """
    stopped = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set()) if on_main else None
    try:
        with ReplayServer(data, host, port, speed, start_ns, end_ns, **options) as server:
            print(
                f"replaying {server.stats.events:,} events on {server.url} "
                f"(speed {speed or 'max'}); Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while not stopped.wait(0.5):
                    pass
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
