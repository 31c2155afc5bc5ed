"""Market data through cpquant's realtime client, kept alive.

cpquant's ``AlpacaRealtimeClient`` hard-codes Alpaca's SIP URL, reads its keys from the
environment, connects in ``__init__`` and swallows every exception in ``listen``. This
module keeps using that client for real and works around each of those:

- the URL and keys are redirected only while ``__init__`` runs (:func:`open_client`);
- ``listen`` runs on a feed thread, never the main thread, so a SIGTERM (Prefect's
  ``TerminationSignal``) lands in the session's main thread where ``finally`` flattens;
- the auth reply is checked: 402/406/409 end the session with a clear error, no retry
  (except a 406 within ``retry_refused_s``, which the hub uses: Alpaca keeps a dropped
  connection alive for a while, so a reconnect is refused until it lets go);
- a dropped or silent stream is reconnected with exponential backoff and jitter, then
  re-authenticated and resubscribed to the current subscription, which
  :meth:`StreamFeed.set_subscription` can change while the feed runs;
- an exception while handling a frame (a model's bug, say) ends the feed with that
  exception, which the session raises, instead of passing for a dropped connection;
- two harmless messages on every successful session are turned into one debug line each
  (:func:`_quiet_listen_end`, :class:`_LateDataAfterClose`): cpquant's ``listen`` prints
  "Error receiving message from websocket!" whenever it returns, and websockets' receive
  thread logs an ``EOFError: stream ended`` traceback when data lands after we closed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets.exceptions
import websockets.sync.client as ws_client

from tradeday.decode import Decoder
from tradeday.events import ns_to_datetime

log = logging.getLogger(__name__)

ENDPOINTS = {
    "iex": "wss://stream.data.alpaca.markets/v2/iex",
    "sip": "wss://stream.data.alpaca.markets/v2/sip",
    "test": "wss://stream.data.alpaca.markets/v2/test",
}
END_OF_REPLAY = "end of replay"
FATAL_CODES = {
    401: "not authenticated",
    402: "auth failed: check the Alpaca key and secret",
    404: "auth timeout",
    405: "symbol limit exceeded: subscribe to fewer symbols",
    406: "connection limit exceeded: another session already uses this account's stream",
    409: "insufficient subscription: this plan cannot use this feed (free plans get 'iex')",
}
_KEY_VARS = ("ALPACA_DATA_PUBLIC_KEY", "ALPACA_DATA_SECRET_KEY")
_redirect_lock = threading.Lock()


def _quiet_listen_end(*args: object, **_kwargs: object) -> None:
    """Stands in for ``print`` inside ``cpquant.data`` only.

    cpquant's ``listen`` prints "Error receiving message from websocket!" every time it
    returns, an end of replay and our own stop included. Why it returned is decided and
    logged by :meth:`StreamFeed._run` (end of data, reconnect, feed error), so the print
    adds nothing but alarm; it goes to the debug log instead.
    """
    log.debug("cpquant: %s", " ".join(str(a) for a in args))


class _LateDataAfterClose(logging.Filter):
    """Demote websockets' 'unexpected internal error' when it is ``EOFError: stream ended``.

    Closing a sync client from another thread (stop, stale-stream reconnect, end of replay)
    can race its receive thread: bytes read just before the close are fed to a reader that
    is already at end-of-stream, which raises ``EOFError("stream ended")``, and websockets
    logs that at ERROR with a traceback although the connection simply ended as asked.
    Only that exact record is dropped (and one debug line written); any other error passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == "unexpected internal error" and isinstance(exc, EOFError):
            log.debug("websockets: data arrived after the close (%s); ignored", exc)
            return False
        return True


logging.getLogger("websockets.client").addFilter(_LateDataAfterClose())


class FeedError(RuntimeError):
    """The stream refused us in a way retrying cannot fix."""


def open_client(url: str, key: str, secret: str) -> Any:
    """A connected cpquant ``AlpacaRealtimeClient`` talking to ``url`` with these keys.

    cpquant looks ``websockets.sync.client.connect`` up when ``__init__`` runs and reads
    its keys from the environment, so both are swapped for exactly that call, under a
    lock, and restored.
    """
    from cpquant import data as cpquant_data  # never cpquant.stats, never its .env

    cpquant_data.print = _quiet_listen_end  # type: ignore[attr-defined]

    with _redirect_lock:
        original_connect = ws_client.connect
        saved = {name: os.environ.get(name) for name in _KEY_VARS}

        def connect(_hard_coded_url: str, **kwargs: Any) -> Any:
            kwargs.setdefault("open_timeout", 10)
            kwargs.setdefault("close_timeout", 2)
            kwargs.setdefault("max_size", 2**24)
            return original_connect(url, **kwargs)

        ws_client.connect = connect
        os.environ[_KEY_VARS[0]] = key
        os.environ[_KEY_VARS[1]] = secret
        try:
            return cpquant_data.AlpacaRealtimeClient()
        finally:
            ws_client.connect = original_connect
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class FrameSink(Protocol):
    """Where the feed thread hands each frame: the session's Decoder, or the hub's router."""

    def feed(self, raw: str | bytes) -> None: ...


class _StopListening(Exception):
    """Raised inside the frame handler to leave cpquant's ``listen`` (which swallows it)."""


@dataclass
class FeedStats:
    connects: int = 0
    reconnects: int = 0
    drops: int = 0
    refused: int = 0
    frames: int = 0
    stale_reconnects: int = 0
    errors: list[str] = field(default_factory=list)


class StreamFeed:
    """Runs cpquant's client on a feed thread; frames go straight into the decoder there."""

    def __init__(
        self,
        url: str,
        key: str,
        secret: str,
        symbols: Sequence[str],
        decoder: Decoder | FrameSink,
        *,
        trades: bool = True,
        quotes: bool = False,
        bars: bool = False,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_reconnects: int = 1_000,
        retry_refused_s: float = 0.0,
        clock: Callable[[], int] | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        on_drop: Callable[[], None] | None = None,
        seed: int | None = None,
    ) -> None:
        """``clock`` gives the tick time of the last event handled: the tick time between
        the last event before a reconnect and the first after it is a gap, logged to
        ``logger`` and kept in :attr:`gaps`. ``on_drop`` is called on the feed thread each
        time a connection is lost (or fails) and a reconnect follows."""
        self.url = url
        self._key = key
        self._secret = secret
        self.symbols = list(symbols)
        self.decoder = decoder
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_reconnects = max_reconnects
        self.retry_refused_s = retry_refused_s
        self.on_drop = on_drop
        self._wanted = {
            kind: list(self.symbols) if on else []
            for kind, on in zip(("trades", "quotes", "bars"), (trades, quotes, bars), strict=True)
        }
        self._live: dict[str, list[str]] | None = None  # what the current connection carries
        self._subscription_lock = threading.Lock()
        self._refused_since: float | None = None
        self._refused = False
        self.clock = clock
        self.log = logger or log
        self.gaps: list[tuple[int, int]] = []
        self._gap_from: int | None = None
        self.stats = FeedStats()
        self.ended = threading.Event()
        self.end_reason = ""
        self.error: Exception | None = None  # why the feed ended, when it was not asked to
        self.last_frame = time.monotonic()
        self._stopping = threading.Event()
        self._client: Any = None
        self._fatal: str | None = None
        self._frame_error: Exception | None = None
        self._random = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="tradeday-feed", daemon=True)

    def __repr__(self) -> str:
        return f"StreamFeed({self.url!r}, symbols={self.symbols})"

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Leave ``listen`` and end the thread; safe from any thread, idempotent."""
        self._stopping.set()
        self._close_socket()
        self._thread.join(timeout)

    def force_reconnect(self, why: str) -> None:
        """Drop the current connection (e.g. silent for too long); the feed thread reconnects."""
        log.warning("feed: forcing a reconnect: %s", why)
        self.stats.stale_reconnects += 1
        self._close_socket()

    def seconds_since_frame(self) -> float:
        return time.monotonic() - self.last_frame

    def _close_socket(self) -> None:
        """Abort the TCP connection, then close: a polite close handshake can wait seconds
        behind unread data, and a stop or a stale stream needs no handshake."""
        client = self._client
        if client is None:
            return
        connection = client.socket
        try:
            connection.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("feed: socket already closed")
        try:
            connection.close()
        except Exception:  # already closed or half-open: nothing left to release
            log.debug("feed: close raised", exc_info=True)

    def set_subscription(
        self, trades: Sequence[str] = (), quotes: Sequence[str] = (), bars: Sequence[str] = ()
    ) -> None:
        """Change what the stream carries while it runs (the hub's union of its sessions).

        The difference goes out at once on a live connection (unsubscribe, then subscribe),
        and the whole set on every reconnect. Safe from any thread: websockets' sync client
        sends from one thread while another receives.
        """
        wanted = {"trades": list(trades), "quotes": list(quotes), "bars": list(bars)}
        with self._subscription_lock:
            self._wanted = wanted
            live, client = self._live, self._client
            if live is None or client is None:
                return  # the next connection subscribes to ``wanted`` whole
            drop = {k: [s for s in live[k] if s not in v] for k, v in wanted.items()}
            add = {k: [s for s in v if s not in live[k]] for k, v in wanted.items()}
            try:
                for action, change in (("unsubscribe", drop), ("subscribe", add)):
                    change = {k: v for k, v in change.items() if v}
                    if change:
                        client.socket.send(json.dumps({"action": action, **change}))
            except (OSError, websockets.exceptions.ConnectionClosed):
                log.warning("feed: connection lost while changing the subscription")
                return  # the reconnect sends ``wanted`` whole
            self._live = wanted

    def _on_frame(self, raw: str | bytes) -> None:
        if self._stopping.is_set() or self._fatal is not None:
            raise _StopListening
        self.last_frame = time.monotonic()
        self.stats.frames += 1
        try:
            self.decoder.feed(raw)
        except Exception as exc:
            # cpquant's listen swallows everything and would look like a dropped connection
            log.error("feed: handling a frame failed", exc_info=True)
            self._frame_error = exc
            self._fatal = f"handling a frame failed: {exc}"
            raise _StopListening from exc
        if self._gap_from is not None:
            self._close_gap()
        if self._fatal is not None or self._refused:
            raise _StopListening

    def _close_gap(self) -> None:
        """The first new event after a reconnect ends the gap (frames of old data do not)."""
        assert self.clock is not None and self._gap_from is not None
        now = self.clock()
        if now <= self._gap_from:
            return
        self.gaps.append((self._gap_from, now))
        self.log.warning(
            "feed gap: no data from %s to %s after a reconnect",
            ns_to_datetime(self._gap_from).isoformat(),
            ns_to_datetime(now).isoformat(),
        )
        self._gap_from = None

    def on_control(self, msg: dict) -> None:
        """Control messages from the decoder: auth and subscription replies, errors."""
        if msg.get("T") != "error":
            if msg.get("msg") == "authenticated":
                self._refused_since = None
            log.debug("feed: %s", msg)
            return
        code = msg.get("code")
        text = f"stream error {code}: {msg.get('msg', '')}"
        self.stats.errors.append(text)
        if code == 406 and self._retry_refusal():
            log.warning("feed: %s; retrying: the account's last connection may linger", text)
            self.stats.refused += 1
            self._refused = True
        elif code in FATAL_CODES:
            self._fatal = f"{text} ({FATAL_CODES[code]})"
        else:
            log.warning("feed: %s", text)

    def _retry_refusal(self) -> bool:
        """A 406 is retried for ``retry_refused_s`` from the first one of a run of them."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        return now - self._refused_since < self.retry_refused_s

    def _subscribe(self, client: Any) -> None:
        """Every kind in one subscribe message, on cpquant's socket.

        cpquant's ``subscribe_trades``/``_quotes``/``_bars`` send one message each, and a
        replay starts its tape at the first subscription: a bars-only recording could be
        over before the bars subscription arrived. Alpaca accepts them in one message.
        """
        with self._subscription_lock:
            wanted = {kind: list(symbols) for kind, symbols in self._wanted.items()}
            message: dict[str, Any] = {"action": "subscribe"}
            for (kind, symbols), subscribed in zip(
                wanted.items(),
                (client.curr_trades, client.curr_quotes, client.curr_bars),
                strict=True,
            ):
                if symbols:
                    message[kind] = symbols
                    subscribed.extend(symbols)
            if len(message) > 1:
                client.socket.send(json.dumps(message))
            self._live = wanted

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                with self._subscription_lock:
                    self._live = None
                try:
                    self._client = open_client(self.url, self._key, self._secret)
                    self.stats.connects += 1
                    if self.stats.connects > 1:
                        self.stats.reconnects += 1
                        if self.clock is not None:
                            self._gap_from = self.clock()
                    try:
                        self._subscribe(self._client)
                    except websockets.exceptions.ConnectionClosed:
                        # dropped mid-subscribe: frames already received are still
                        # buffered, and listen() below drains them before it returns
                        log.warning("feed: connection closed while subscribing")
                    frames_before = self.stats.frames
                    self.last_frame = time.monotonic()
                    self._client.listen(self._on_frame)
                    if self.stats.frames - frames_before > 2 and not self._refused:
                        attempt = 0
                except (OSError, websockets.exceptions.WebSocketException) as exc:
                    # refused, reset, handshake or timeout: all worth a retry
                    log.warning("feed: connect to %s failed: %s", self.url, exc)
                if self._fatal is not None:
                    self.error = self._frame_error or FeedError(self._fatal)
                    self.end_reason = "feed error"
                    return
                if self._stopping.is_set():
                    self.end_reason = "stopped"
                    return
                connection = getattr(self._client, "socket", None)
                if getattr(connection, "close_reason", "") == END_OF_REPLAY:
                    self.end_reason = "end of data"
                    return
                if self._refused:
                    self._refused = False
                    self._close_socket()
                self.stats.drops += 1
                if self.stats.drops > self.max_reconnects:
                    self.error = FeedError(f"gave up after {self.max_reconnects} reconnects")
                    self.end_reason = "feed error"
                    return
                delay = min(self.backoff_cap, self.backoff_base * 2**attempt)
                delay *= 0.5 + self._random.random() / 2
                attempt += 1
                log.warning(
                    "feed: connection lost; reconnecting in %.2fs (attempt %d)", delay, attempt
                )
                if self.on_drop is not None:
                    self.on_drop()
                self._stopping.wait(delay)
        finally:
            self._client = None if self._stopping.is_set() else self._client
            self.ended.set()
