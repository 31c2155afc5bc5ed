"""The market-data hub: one upstream Alpaca connection, many local sessions.

Alpaca allows one market-data stream connection per account on most plans, so several
model sessions on one account share the hub's. Sessions connect to the hub with cpquant's
client unchanged: it serves the same Alpaca v2 protocol (:mod:`tradeday.replay.protocol`,
JSON or msgpack), authenticated with a local credential. The Alpaca keys stay here.

- **Subscriptions.** The upstream subscription is the union of the sessions' subscriptions,
  changed on the live connection as sessions subscribe, unsubscribe and leave. Each session
  gets exactly the trades, quotes and bars of its own subscription, in upstream order,
  framed as upstream framed them (a frame's messages it did not ask for left out); frames
  that queued up while a session was behind go out merged, up to ``COALESCE`` messages.
- **Slow sessions.** Each session has its own send queue, bounded by ``max_pending``
  messages; the upstream reader never waits for a session. A session whose queue is full
  is cut with ``407 slow client``, as Alpaca would, and the others go on.
- **Upstream faults.** A dropped or silent upstream is reconnected with backoff and
  resubscribed (the feed's own machinery), a ``406`` after a drop retried for
  ``retry_refused_s``. Each session is closed (1011) after what it was sent before the
  drop, so it reconnects and counts the gap exactly as with a direct connection.
- **Replays.** When the upstream is a replay server that ends its recording
  (``end of replay``), every session gets the same close once its queue is sent, so
  rehearsals end like a direct replay.
- **Recording.** With a :class:`~tradeday.hub.recorder.Recorder`, every upstream event is
  also written for replay, off the loop (see that module).
- **Trade updates.** With ``trade_updates`` (the account's Alpaca ``trade_updates``
  endpoint), the hub also holds that one connection and serves it at ``/stream`` on the
  same port, each order's events to the session whose ``client_order_id`` prefix it
  carries (:mod:`tradeday.hub.trade_updates`). Every other path is the market data.
- **Fatal upstream errors** (402 keys, 409 plan, 406 beyond the retry window): the hub
  closes its sessions and stops; :attr:`Hub.failure` says why, and the supervisor
  (systemd) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tradeday.brokers.trade_updates import StreamEndpoint
from tradeday.feed import END_OF_REPLAY, StreamFeed
from tradeday.hub.recorder import Recorder
from tradeday.hub.trade_updates import PATH as TRADE_UPDATES_PATH
from tradeday.hub.trade_updates import TradeUpdatesRelay
from tradeday.hub.upstream import Frame, Router
from tradeday.replay.protocol import (
    CHANNELS,
    ERRORS,
    STOP_GRACE,
    Connection,
    ServerStats,
    StreamServer,
)
from tradeday.replay.wire import Format, frame, join

log = logging.getLogger(__name__)

HUB_KEY = "tradeday-hub"
"""The key sessions authenticate with; the secret is the hub's local credential."""
SECRET_VAR = "TRADEDAY_HUB_SECRET"
"""Where the hub and its sessions read the local credential (never the Alpaca keys)."""
DEFAULT_PORT = 8766
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}"
UPSTREAM_LOST = "hub upstream connection lost"
UPSTREAM_FAILED = "hub upstream failed"
COALESCE = 1_000
"""Most messages in one frame to a session: a session behind catches up in fewer sends."""
IN_FLIGHT = 64
"""Upstream frames handed to the loop and not yet routed: beyond, the reader waits for the
loop (never for a session), so a busy loop cannot pile frames up in memory."""


@dataclass
class HubStats(ServerStats):
    """The hub's counters beside the connection counters; read them any time."""

    frames_in: int = 0
    messages_in: int = 0
    sent: int = 0
    slow_cuts: int = 0
    upstream_losses: int = 0


@dataclass(frozen=True)
class _Close:
    """Queued behind a session's data: close once everything before it was sent."""

    code: int
    reason: str


class _Session(Connection):
    """A local session: its subscription, its bounded send queue and the task draining it."""

    def __init__(self, ws: ServerConnection, fmt: Format) -> None:
        super().__init__(ws, fmt)
        self.queue: deque[tuple[list[bytes], int] | _Close] = deque()  # (JSON runs or msgpack
        # messages, how many messages) per frame
        self.pending = 0  # data messages queued, not yet sent
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.closing = False

    def takes(self, kind: str, symbol: str) -> bool:
        symbols = self.wanted[kind]
        return bool(symbols) and (symbol in symbols or "*" in symbols)

    def push(self, entry: tuple[list[bytes], int] | _Close) -> None:
        self.queue.append(entry)
        self.wake.set()


class Hub(StreamServer):
    """Serve one upstream Alpaca stream to local sessions; see the module docstring.

    ``upstream_url`` with ``upstream_key``/``upstream_secret`` is Alpaca (or a replay server
    acting as Alpaca); sessions authenticate with ``key``/``secret``, which must not be the
    Alpaca keys. ``symbol_limit`` is the plan's limit on the upstream: a session whose
    subscription would take the union past it gets 405 (Alpaca's answer to the hub would
    end every session's stream). ``max_sessions`` authenticated sessions at once (406 beyond),
    ``max_pending`` queued messages per session before 407, ``stale_after_s`` of upstream
    silence (after data has flowed on a connection) forces a reconnect.
    """

    path = "/v2/hub"
    thread_name = "tradeday-hub"

    def __init__(
        self,
        upstream_url: str,
        upstream_key: str,
        upstream_secret: str,
        *,
        secret: str,
        key: str = HUB_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        max_sessions: int = 64,
        max_pending: int = 100_000,
        symbol_limit: int | None = None,
        auth_timeout: float = 10.0,
        allow_remote: bool = False,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_refused_s: float = 120.0,
        stale_after_s: float = 60.0,
        recorder: Recorder | None = None,
        seed: int | None = None,
        trade_updates: StreamEndpoint | None = None,
    ) -> None:
        if not secret:
            raise ValueError(f"the hub needs a local secret for its sessions ({SECRET_VAR})")
        if (key, secret) == (upstream_key, upstream_secret) or secret == upstream_secret:
            raise ValueError("the hub's local secret must not be the Alpaca secret")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        super().__init__(
            host,
            port,
            key=key,
            secret=secret,
            max_connections=max_sessions,
            symbol_limit=symbol_limit,
            auth_timeout=auth_timeout,
            allow_remote=allow_remote,
            stats=HubStats(),
        )
        self.stats: HubStats
        self.max_pending = max_pending
        self.stale_after_s = stale_after_s
        self.recorder = recorder
        self.failure: Exception | None = None
        self.router = Router(self._deliver, self._on_upstream_control)
        self.upstream = StreamFeed(
            upstream_url,
            upstream_key,
            upstream_secret,
            [],
            self.router,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_refused_s=retry_refused_s,
            on_drop=self._on_upstream_drop,
            seed=seed,
        )
        self._routes: list[_Session] = []
        self._union: dict[str, list[str]] = {name: [] for name in CHANNELS}
        self._up = False  # authenticated upstream since the last loss
        self._finished = False  # the upstream replay ended
        self._frames_at_connect = 0  # frames_in when the upstream last authenticated
        self._in_flight = threading.Semaphore(IN_FLIGHT)
        self.upstream_confirmed: dict[str, list[str]] = {name: [] for name in CHANNELS}
        """The upstream's last subscription reply: what it really carries."""
        self._closing: set[asyncio.Task[None]] = set()
        self.trade_updates = (
            None
            if trade_updates is None
            else TradeUpdatesRelay(
                trade_updates,
                key=key,
                secret=secret,
                auth_timeout=auth_timeout,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
            )
        )

    def __repr__(self) -> str:
        return f"Hub({self.url!r}, sessions={len(self._routes)})"

    def upstream_subscription(self) -> dict[str, list[str]]:
        """The union the upstream connection is subscribed to (a copy)."""
        return {name: list(symbols) for name, symbols in self._union.items()}

    # -- upstream (feed thread) -----------------------------------------------------------

    def _call(self, callback: Any, *args: Any) -> None:
        """Run ``callback`` on the hub's loop, after every frame delivered before it."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: the hub is stopping
                loop.call_soon_threadsafe(callback, *args)

    def _deliver(self, frame: Frame) -> None:
        while not self._in_flight.acquire(timeout=0.5):
            if self._loop is None or self._loop.is_closed():
                return
        self._call(self._route, frame)

    def _on_upstream_control(self, message: dict[str, Any]) -> None:
        self.upstream.on_control(message)
        if message.get("msg") == "authenticated":
            self._call(self._upstream_authenticated)
        elif message.get("T") == "subscription":
            self.upstream_confirmed = {name: list(message.get(name, [])) for name in CHANNELS}

    def _on_upstream_drop(self) -> None:
        self._call(self._upstream_lost)

    def _watch_upstream(self) -> None:
        self.upstream.ended.wait()
        self._call(self._upstream_ended)

    # -- hub loop -------------------------------------------------------------------------

    async def _background(self) -> None:
        """Start the upstream (and recorder), watch it go silent; stop them with the hub."""
        if self.recorder is not None:
            self.recorder.start()
        if self.trade_updates is not None:
            self.trade_updates.start(asyncio.get_running_loop())
        self.upstream.start()
        threading.Thread(target=self._watch_upstream, name="hub-upstream", daemon=True).start()
        try:
            while True:
                await asyncio.sleep(min(1.0, self.stale_after_s / 4))
                silent = self.upstream.seconds_since_frame()
                had_data = self.stats.frames_in > self._frames_at_connect
                if self._up and had_data and silent > self.stale_after_s:
                    self.upstream.force_reconnect(f"upstream silent for {silent:.0f} s")
        finally:
            await asyncio.to_thread(self.upstream.stop)
            if self.trade_updates is not None:
                await asyncio.to_thread(self.trade_updates.stop)
            if self.recorder is not None:
                await asyncio.to_thread(self.recorder.stop)

    def _upstream_authenticated(self) -> None:
        self._up = True
        self._frames_at_connect = self.stats.frames_in
        log.info("hub: upstream authenticated; subscribed to %s", self._union)

    def _upstream_lost(self) -> None:
        """Close every session behind what it was sent, so each counts the gap itself."""
        if not self._up:
            return  # a failed reconnect: the sessions were closed at the loss already
        self._up = False
        self.stats.upstream_losses += 1
        log.warning("hub: upstream lost; closing %d sessions, reconnecting", len(self._clients))
        for client in tuple(self._clients):
            assert isinstance(client, _Session)
            self._close_after_queue(client, 1011, UPSTREAM_LOST)

    def _upstream_ended(self) -> None:
        feed = self.upstream
        if feed.end_reason == "end of data":
            log.info("hub: the upstream replay ended; ending every session")
            self._finished = True
            for session in tuple(self._routes):
                self._close_after_queue(session, 1000, END_OF_REPLAY)
            return
        if feed.error is not None:
            self.failure = feed.error
            log.error("hub: upstream failed, stopping: %s", feed.error)
            for client in tuple(self._clients):
                assert isinstance(client, _Session)
                self._close_after_queue(client, 1011, UPSTREAM_FAILED)
            self._request_stop()

    def _route(self, frame: Frame) -> None:
        """One upstream frame to every session that takes any of it; never waits."""
        self._in_flight.release()
        items = frame.items
        self.stats.frames_in += 1
        self.stats.messages_in += len(items)
        if self.recorder is not None:
            self.recorder.add(items)
        for session in tuple(self._routes):
            taken = {key for key in frame.keys if session.takes(*key)}
            if not taken:
                continue
            if len(taken) == len(frame.keys):
                chosen = items
            else:
                chosen = [item for item in items if (item.kind, item.symbol) in taken]
            if session.pending + len(chosen) > self.max_pending:
                self._cut_slow(session)
                continue
            session.pending += len(chosen)
            if frame.body is not None and len(chosen) == len(items) and session.fmt is Format.JSON:
                session.push(([frame.body], len(items)))  # the upstream's own bytes
            else:
                session.push(([item.encoded(session.fmt) for item in chosen], len(chosen)))

    def _cut_slow(self, session: _Session) -> None:
        """407 and close, as Alpaca does: what was queued for it is dropped, not sent."""
        self.stats.slow_cuts += 1
        log.warning("hub: cutting a slow session (%d messages queued)", session.pending)
        self._unroute(session)
        session.closing = True
        session.queue.clear()
        session.pending = 0
        if session.writer is not None:
            session.writer.cancel()
        self._spawn(self._send_407(session))

    async def _send_407(self, session: _Session) -> None:
        """The error and close frames go into the socket buffer behind what it already holds;
        a session that never reads again is cut without them."""
        self.stats.errors[407] = self.stats.errors.get(407, 0) + 1
        error = [{"T": "error", "code": 407, "msg": ERRORS[407]}]
        try:
            await asyncio.wait_for(
                session.ws.send(frame(error, session.fmt), text=session.fmt is Format.JSON),
                STOP_GRACE,
            )
            await asyncio.wait_for(session.ws.close(1008, ERRORS[407]), STOP_GRACE)
        except (TimeoutError, ConnectionClosed):
            session.ws.transport.close()  # flush what is buffered, then FIN
        self._forget(session)

    def _close_after_queue(self, session: _Session, code: int, reason: str) -> None:
        if session.closing:
            return
        session.closing = True
        self._unroute(session)
        session.push(_Close(code, reason))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _write(self, session: _Session) -> None:
        """Send a session's queue in order, merging queued frames; a close entry ends it."""
        text = session.fmt is Format.JSON
        queue = session.queue
        try:
            while True:
                while not queue:
                    session.wake.clear()
                    await session.wake.wait()
                entry = queue.popleft()
                if isinstance(entry, _Close):
                    await self._close_now(session, entry.code, entry.reason)
                    return
                parts, count = entry
                while queue and not isinstance(queue[0], _Close):
                    more, n = queue[0]
                    if count + n > COALESCE:
                        break
                    queue.popleft()
                    parts, count = parts + more, count + n
                # a JSON part may be a comma-joined run of messages (a whole upstream
                # frame's body); a msgpack part is always one message
                await session.ws.send(join(parts, session.fmt), text=text)
                session.pending -= count
                self.stats.sent += count
        except ConnectionClosed:
            self._forget(session)

    # -- sessions -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path.split("?")[0] if ws.request else ""
        if self.trade_updates is not None and path == TRADE_UPDATES_PATH:
            await self.trade_updates.handle(ws)
        else:
            await super()._handle(ws)

    def _connection(self, ws: ServerConnection, fmt: Format) -> _Session:
        session = _Session(ws, fmt)
        session.writer = asyncio.create_task(self._write(session))
        return session

    def _subscription_changed(self, client: Connection) -> None:
        assert isinstance(client, _Session)
        if client.closing:
            return
        if self._finished and client.subscribed():
            self._close_after_queue(client, 1000, END_OF_REPLAY)
            return
        if client.subscribed():
            if client not in self._routes:
                self._routes.append(client)
        else:
            self._unroute(client)
        self._resubscribe()

    def _symbols_with(self, client: Connection, updated: dict[str, dict[str, None]]) -> int:
        """The union's distinct symbols if ``client`` takes ``updated``: the upstream's count."""
        symbols = {s for name in CHANNELS for s in updated[name]}
        for session in self._routes:
            if session is not client:
                symbols.update(s for name in CHANNELS for s in session.channels[name])
        return len(symbols)

    def _unroute(self, session: _Session) -> None:
        if session in self._routes:
            self._routes.remove(session)
            self._resubscribe()

    def _resubscribe(self) -> None:
        """Make the upstream carry the union of the sessions' subscriptions.

        Called on the loop: the upstream send is one small frame over an open socket.
        """
        union: dict[str, list[str]] = {}
        for name in CHANNELS:
            merged: dict[str, None] = {}
            for session in self._routes:
                merged.update(session.channels[name])
            union[name] = ["*"] if "*" in merged else list(merged)
        if union == self._union:
            return
        self._union = union
        self.upstream.set_subscription(**union)

    def _forget(self, client: Connection) -> bool:
        if not super()._forget(client):
            return False
        assert isinstance(client, _Session)
        self._unroute(client)
        client.queue.clear()
        client.pending = 0
        writer = client.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        return True
