"""The hub's ``trade_updates``: one upstream connection per account, routed to sessions.

Alpaca gives an account one ``trade_updates`` stream carrying every order's events. The
hub holds it (:class:`~tradeday.brokers.trade_updates.TradeUpdatesClient`, the Alpaca
keys stay here) and serves the same protocol at ``/stream`` on its own port to local
sessions, which authenticate with the hub's local credential. A session names its
``client_order_id`` prefix in ``listen`` (``client_order_id_prefix``; each run's orders
carry the run's) and gets exactly the events of orders with that prefix, in upstream order;
one that names none (alpaca-py's ``TradingStream``) gets the account's every event.

Faults: while the upstream is not listening the hub refuses sessions (close 1013, try
again), and when it drops every session is closed (1011): their brokers poll meanwhile and
reconcile when they are back, since Alpaca does not replay a gap. A session whose queue
passes ``max_pending`` events is cut (1008); the others never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tradeday.brokers.trade_updates import PREFIX_FIELD, StreamEndpoint, TradeUpdatesClient
from tradeday.replay.protocol import decode_message

log = logging.getLogger(__name__)

PATH = "/stream"
UPSTREAM_DOWN = "hub trade_updates upstream not connected"
UPSTREAM_LOST = "hub trade_updates upstream lost"
_SLOW = b""  # queued for a session cut for being slow (None: the upstream was lost)


@dataclass
class RelayStats:
    """Counters, updated on the hub's loop; read them any time."""

    sessions: int = 0
    routed: int = 0
    """Event deliveries to sessions (one event to two sessions counts two)."""
    unrouted: int = 0
    """Upstream events no session's prefix took (another program's orders)."""
    refused: int = 0
    slow_cuts: int = 0


@dataclass(eq=False)
class _Listener:
    prefix: str | None
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def takes(self, client_order_id: str) -> bool:
        return self.prefix is None or client_order_id.startswith(self.prefix)


def _reply(stream: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


class TradeUpdatesRelay:
    """One upstream ``trade_updates`` connection at ``upstream``, served to local sessions."""

    def __init__(
        self,
        upstream: StreamEndpoint,
        *,
        key: str,
        secret: str,
        max_pending: int = 10_000,
        auth_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.key = key
        self.secret = secret
        self.max_pending = max_pending
        self.auth_timeout = auth_timeout
        self.stats = RelayStats()
        self.upstream = TradeUpdatesClient(
            upstream,
            self._from_upstream,
            self._upstream_state,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            name="hub-trade-updates",
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[_Listener] = []

    @property
    def listeners(self) -> tuple[str | None, ...]:
        """The prefixes of the sessions listening now (None: all of the account's events)."""
        return tuple(listener.prefix for listener in self._listeners)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.upstream.start()

    def stop(self) -> None:
        self.upstream.stop()

    # -- upstream (stream thread) ---------------------------------------------------------

    def _call(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: the hub is stopping
                loop.call_soon_threadsafe(callback, *args)

    def _from_upstream(self, data: dict[str, Any]) -> None:
        cid = str((data.get("order") or {}).get("client_order_id") or "")
        self._call(self._route, cid, _reply("trade_updates", data))

    def _upstream_state(self, listening: bool) -> None:
        if not listening:
            self._call(self._upstream_lost)

    # -- hub loop -------------------------------------------------------------------------

    def _route(self, client_order_id: str, raw: bytes) -> None:
        taken = 0
        for listener in tuple(self._listeners):
            if not listener.takes(client_order_id):
                continue
            if listener.queue.qsize() >= self.max_pending:
                self.stats.slow_cuts += 1
                log.warning(
                    "hub: cutting a slow trade_updates session (prefix %r)", listener.prefix
                )
                self._listeners.remove(listener)
                listener.queue.put_nowait(_SLOW)
                continue
            listener.queue.put_nowait(raw)
            taken += 1
        self.stats.routed += taken
        self.stats.unrouted += not taken

    def _upstream_lost(self) -> None:
        log.warning("hub: trade_updates upstream lost; closing %d sessions", len(self._listeners))
        for listener in self._listeners:
            listener.queue.put_nowait(None)
        self._listeners.clear()

    async def handle(self, ws: ServerConnection) -> None:
        """One local session: authenticate, listen, then its events until either side ends."""
        try:
            if not await self._authenticate(ws):
                return
            listener = await self._listen(ws)
        except (ConnectionClosed, TimeoutError):
            return
        if listener is None:
            return
        self.stats.sessions += 1
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                nxt = asyncio.ensure_future(listener.queue.get())
                await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return
                raw = nxt.result()
                if raw is None:
                    await ws.close(1011, UPSTREAM_LOST)
                    return
                if raw == _SLOW:
                    await ws.close(1008, "slow client")
                    return
                await ws.send(raw)
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

    async def _authenticate(self, ws: ServerConnection) -> bool:
        message = decode_message(await asyncio.wait_for(ws.recv(), self.auth_timeout))
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
            message = {"data": {}}
        data = message["data"]
        ok = message.get("action") == "authenticate" and (
            data.get("key_id"),
            data.get("secret_key"),
        ) == (self.key, self.secret)
        status = "authorized" if ok else "unauthorized"
        await ws.send(_reply("authorization", {"status": status, "action": "authenticate"}))
        if not ok:
            self.stats.refused += 1
            await ws.close(1008, "unauthorized")
            return False
        if not self.upstream.listening:
            self.stats.refused += 1
            await ws.close(1013, UPSTREAM_DOWN)
            return False
        return True

    async def _listen(self, ws: ServerConnection) -> _Listener | None:
        message = decode_message(await asyncio.wait_for(ws.recv(), self.auth_timeout))
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
            message = {"data": {}}
        data = message["data"]
        streams, prefix = data.get("streams"), data.get(PREFIX_FIELD)
        if message.get("action") != "listen" or not isinstance(streams, list):
            await ws.close(1008, "expected listen")
            return None
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            await ws.close(1008, f"{PREFIX_FIELD} must be a non-empty string")
            return None
        listening = [s for s in streams if s == "trade_updates"]
        await ws.send(_reply("listening", {"streams": listening}))
        if not listening:
            return None
        listener = _Listener(prefix)
        self._listeners.append(listener)
        return listener
