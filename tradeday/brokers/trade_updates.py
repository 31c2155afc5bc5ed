"""A client of Alpaca's ``trade_updates`` websocket, on a thread of its own.

The Alpaca broker takes fills from it, and the hub holds the account's one upstream
connection with it. It speaks the protocol alpaca-py's ``TradingStream`` speaks
(``authenticate`` → ``authorization``, ``listen`` → ``listening``, then one
``trade_updates`` message per order event, binary frames holding JSON) but is a plain
thread with a sync websocket: it can be stopped at once from any thread, reconnects with
jittered backoff, and says when it is listening and when it is not, so the caller polls
while it is not. Alpaca does not replay the events of a gap: the caller reconciles by
polling when the stream comes back.

To the hub, a session also sends its ``client_order_id`` prefix in ``listen``
(``client_order_id_prefix``), and the hub sends it only its own orders' events.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

log = logging.getLogger(__name__)

PREFIX_FIELD = "client_order_id_prefix"
"""The ``listen`` field a hub session names its orders' prefix with (a tradeday extension)."""


def stream_url(base_url: str) -> str:
    """The ``trade_updates`` websocket next to a trading API or hub URL: ``wss://host/stream``."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/stream", "", ""))


@dataclass(frozen=True, slots=True)
class StreamEndpoint:
    """Where to listen and with which keys; ``repr`` never shows the keys."""

    url: str
    key_id: str
    secret_key: str
    prefix: str | None = None
    """Sent to a hub so it routes only this session's orders; None for Alpaca itself."""

    def __repr__(self) -> str:
        return f"StreamEndpoint({self.url!r}, <redacted>, prefix={self.prefix!r})"


@dataclass
class StreamStats:
    """Counters, updated by the stream thread; read them any time."""

    connects: int = 0
    drops: int = 0
    events: int = 0


class StreamRefused(WebSocketException):
    """The stream answered the handshake with anything but authorized and listening."""


class TradeUpdatesClient:
    """Listen to ``trade_updates`` at ``endpoint`` until :meth:`stop`.

    ``on_event`` gets each event's ``data`` object, ``on_state`` True once listening and
    False when the connection is lost; both run on the stream thread and must not block.
    """

    def __init__(
        self,
        endpoint: StreamEndpoint,
        on_event: Callable[[dict[str, Any]], None],
        on_state: Callable[[bool], None],
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        name: str = "trade-updates",
    ) -> None:
        self.endpoint = endpoint
        self.stats = StreamStats()
        self._on_event = on_event
        self._on_state = on_state
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stop = threading.Event()
        self._ws: ClientConnection | None = None
        self._listening = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def listening(self) -> bool:
        return self._listening

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread. Idempotent."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            ws.close()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
            except (OSError, TimeoutError, ValueError, WebSocketException) as err:
                if self._stop.is_set():
                    return
                failures = 1 if self._listening else failures + 1  # after a drop: base delay
                log.warning(
                    "trade_updates at %s: %s: %s", self.endpoint.url, type(err).__name__, err
                )
            finally:
                self._ws = None
                if self._listening:
                    self._listening = False
                    self.stats.drops += 1
                    self._on_state(False)
            delay = min(self._backoff_cap, self._backoff_base * 2 ** max(failures - 1, 0))
            self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _listen(self) -> None:
        e = self.endpoint
        with connect(e.url, open_timeout=10, close_timeout=2) as ws:
            self._ws = ws
            if self._stop.is_set():
                return
            auth = {"key_id": e.key_id, "secret_key": e.secret_key}
            ws.send(json.dumps({"action": "authenticate", "data": auth}))
            reply = json.loads(ws.recv(timeout=10))
            if (reply.get("data") or {}).get("status") != "authorized":
                raise StreamRefused(f"not authorized: {reply.get('data')}")
            listen: dict[str, Any] = {"streams": ["trade_updates"]}
            if e.prefix is not None:
                listen[PREFIX_FIELD] = e.prefix
            ws.send(json.dumps({"action": "listen", "data": listen}))
            reply = json.loads(ws.recv(timeout=10))
            if "trade_updates" not in ((reply.get("data") or {}).get("streams") or []):
                raise StreamRefused(f"not listening: {reply.get('data')}")
            self.stats.connects += 1
            self._listening = True
            log.info("trade_updates: listening at %s", e.url)
            self._on_state(True)
            for raw in ws:
                message = json.loads(raw)
                if message.get("stream") == "trade_updates":
                    self.stats.events += 1
                    self._on_event(message["data"])
            raise OSError(f"closed by the server ({ws.close_code} {ws.close_reason})".strip())
