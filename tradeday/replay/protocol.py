"""The server side of Alpaca's market-data v2 stream protocol, shared by the replay server
and the hub.

:class:`StreamServer` runs a websockets listener on its own thread and event loop (so a
caller inside a loop of its own, Prefect or Jupyter, can run one) and takes every
connection through Alpaca's handshake: ``connected``, ``auth`` within ``auth_timeout``
(402 wrong credential, 403 already authenticated, 404 timeout, 406 over
``max_connections``), then ``subscribe``/``unsubscribe`` (400 bad syntax, 401 before auth,
405 over ``symbol_limit``), each answered with the whole current subscription. What data a
subscribed connection gets is the subclass's concern: the replay server's tape, the hub's
upstream. Frames are JSON, or msgpack when the client's handshake says
``Content-Type: application/msgpack``, as with Alpaca.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import msgpack
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tradeday.replay.wire import Format, frame

log = logging.getLogger(__name__)

ERRORS = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    500: "internal error",
}
CHANNELS = {"trades": "t", "quotes": "q", "bars": "b"}
"""Subscription channels that carry trades, quotes and bars, and each one's message ``T``."""
QUIET_CHANNELS = ("updatedBars", "dailyBars", "statuses", "lulds", "corrections", "cancelErrors")
"""Real Alpaca channels tradeday has no data for: accepted, echoed, never sent."""
STOP_GRACE = 2.0
"""Seconds ``stop()`` gives each client to complete the close handshake before cutting it."""


@dataclass
class ServerStats:
    """Connection counters, updated by the server thread; read them any time (ints are atomic)."""

    connections: int = 0
    active: int = 0
    authenticated: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class Connection:
    """One websocket connection's protocol state: format, auth and subscription."""

    def __init__(self, ws: ServerConnection, fmt: Format) -> None:
        self.ws = ws
        self.fmt = fmt
        self.authenticated = False
        self.alive = True
        self.channels: dict[str, dict[str, None]] = {
            name: {} for name in (*CHANNELS, *QUIET_CHANNELS)
        }
        self.wanted: dict[str, dict[str, None]] = {
            kind: self.channels[name] for name, kind in CHANNELS.items()
        }
        self.version = 0  # bumped on every subscription change

    def subscribed(self) -> bool:
        return any(self.wanted.values())

    def subscription(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"T": "subscription"}
        for name, symbols in self.channels.items():
            if name in CHANNELS or symbols:
                reply[name] = list(symbols)
        return reply


class StreamServer:
    """An Alpaca v2 stream server on a background thread; subclasses provide the data.

    Subclasses override :meth:`_connection` (their per-connection state),
    :meth:`_subscription_changed`, :meth:`_forget` (calling ``super()``) and
    :meth:`_background` (a task that runs while the server listens). Only loopback hosts
    unless ``allow_remote``. Use as a context manager, or ``start()``/``stop()`` (a server
    runs once); ``url`` is where clients connect (any path is accepted).
    """

    path = "/v2/stream"
    thread_name = "stream-server"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        key: str,
        secret: str,
        max_connections: int,
        symbol_limit: int | None,
        auth_timeout: float,
        allow_remote: bool,
        stats: ServerStats,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"refusing to bind {host!r}: not loopback (pass allow_remote=True)")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.host = host
        self.key = key
        self.secret = secret
        self.max_connections = max_connections
        self.symbol_limit = symbol_limit
        self.auth_timeout = auth_timeout
        self.stats = stats
        self._port = port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._clients: set[Connection] = set()
        self._authenticated = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}{self.path}"

    @property
    def running(self) -> bool:
        """Started and not yet stopped (by ``stop()`` or by a failure of its own)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start listening in a background thread; returns once clients can connect."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Close every client (code 1001) and the listener, then join the thread. Idempotent."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._request_stop()
        thread.join(timeout)

    def _request_stop(self) -> None:
        """Ask the server loop to stop; safe from any thread, even the loop's own."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- server thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() when it happens during startup
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._prepare()
        # No compression: it would cost more CPU than loopback bandwidth. No keepalive pings:
        # a slow consumer is a subclass's decision (throttle or cut), never a late pong's.
        async with serve(
            self._handle, self.host, self._port, compression=None, ping_interval=None
        ) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            background = asyncio.create_task(self._background())
            self._ready.set()
            await self._stopping.wait()
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            await asyncio.gather(*(self._close_now(c) for c in tuple(self._clients)))

    async def _prepare(self) -> None:
        """Runs on the server loop before it listens (subclasses create their loop objects)."""

    async def _background(self) -> None:
        """Runs while the server listens; cancelled by ``stop()``."""

    async def _close_now(
        self, client: Connection, code: int = 1001, reason: str = "server stopping"
    ) -> None:
        """Close (1001 by default), or cut the TCP connection of a client too stuck to answer."""
        try:
            await asyncio.wait_for(client.ws.close(code, reason), STOP_GRACE)
        except (TimeoutError, ConnectionClosed):
            client.ws.transport.abort()

    # -- protocol ------------------------------------------------------------------------

    def _connection(self, ws: ServerConnection, fmt: Format) -> Connection:
        return Connection(ws, fmt)

    async def _handle(self, ws: ServerConnection) -> None:
        content_type = ws.request.headers.get("Content-Type", "") if ws.request else ""
        fmt = Format.MSGPACK if "msgpack" in content_type else Format.JSON
        client = self._connection(ws, fmt)
        self.stats.connections += 1
        self.stats.active += 1
        self._clients.add(client)
        try:
            await self._control(client, {"T": "success", "msg": "connected"})
            try:
                async with asyncio.timeout(self.auth_timeout):
                    while not client.authenticated:
                        if not await self._on_message(client, await ws.recv()):
                            return
            except TimeoutError:
                await self._error(client, 404)
                await ws.close(1008, ERRORS[404])
                return
            async for raw in ws:
                if not await self._on_message(client, raw):
                    return
        except ConnectionClosed:
            pass
        finally:
            self._forget(client)
            self._clients.discard(client)
            self.stats.active -= 1

    async def _on_message(self, client: Connection, raw: str | bytes) -> bool:
        """Handle one client message; False when the connection must end."""
        message = decode_message(raw)
        action = message.get("action") if isinstance(message, dict) else None
        if action == "auth":
            return await self._auth(client, message)
        if action in ("subscribe", "unsubscribe"):
            if not client.authenticated:
                await self._error(client, 401)
            else:
                await self._subscribe(client, message, action == "subscribe")
            return True
        await self._error(client, 400)
        return True

    async def _auth(self, client: Connection, message: dict[str, Any]) -> bool:
        if client.authenticated:
            await self._error(client, 403)
        elif message.get("key") != self.key or message.get("secret") != self.secret:
            await self._error(client, 402)
        elif self._authenticated >= self.max_connections:
            await self._error(client, 406)
            await client.ws.close(1008, ERRORS[406])
            return False
        else:
            client.authenticated = True
            self._authenticated += 1
            self.stats.authenticated += 1
            await self._control(client, {"T": "success", "msg": "authenticated"})
        return True

    async def _subscribe(self, client: Connection, message: dict[str, Any], add: bool) -> None:
        changes: dict[str, list[str]] = {}
        for name in client.channels:
            symbols = message.get(name)
            if symbols is None:
                continue
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                await self._error(client, 400)
                return
            changes[name] = symbols
        updated = {name: dict(symbols) for name, symbols in client.channels.items()}
        for name, symbols in changes.items():
            for symbol in symbols:
                if add:
                    updated[name][symbol] = None
                else:
                    updated[name].pop(symbol, None)
        if (
            self.symbol_limit is not None
            and self._symbols_with(client, updated) > self.symbol_limit
        ):
            await self._error(client, 405)
            return
        for name, symbols in updated.items():  # in place: client.wanted shares these dicts
            client.channels[name].clear()
            client.channels[name].update(symbols)
        client.version += 1
        await self._control(client, client.subscription())
        if client.alive:
            self._subscription_changed(client)

    def _symbols_with(self, client: Connection, updated: dict[str, dict[str, None]]) -> int:
        """Distinct symbols ``symbol_limit`` counts if ``client`` takes ``updated``: its own."""
        return len({s for name in CHANNELS for s in updated[name]})

    def _subscription_changed(self, client: Connection) -> None:
        """A live client's subscription changed (its reply already sent)."""

    async def _control(self, client: Connection, message: dict[str, Any]) -> None:
        await client.ws.send(frame([message], client.fmt), text=client.fmt is Format.JSON)

    async def _error(self, client: Connection, code: int) -> None:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        await self._control(client, {"T": "error", "code": code, "msg": ERRORS[code]})

    def _forget(self, client: Connection) -> bool:
        """Take a client off the data and free its connection slot; False if already done."""
        if not client.alive:
            return False
        client.alive = False
        if client.authenticated:
            self._authenticated -= 1
        return True


def decode_message(raw: str | bytes) -> Any:
    """A client message: msgpack (binary frames) or JSON; None when neither parses."""
    if isinstance(raw, bytes):
        with contextlib.suppress(ValueError, msgpack.UnpackException):
            return msgpack.unpackb(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
