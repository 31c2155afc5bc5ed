"""Where a session's ticks come from: one small interface, one class per source.

Every source ends in the same place: a URL speaking Alpaca's v2 market-data protocol that
cpquant's realtime client connects to (:mod:`tradeday.feed`). What differs between them
lives here and nowhere else: the URL and its keys, the bars a model warms up on, whether
to wait for the open, when a silent stream is stale, whether the wall clock ends the
session, and how fast to retry a dropped connection. The session loop asks the source and
never which source it has.

- :class:`ReplaySource` streams a recording through the embedded replay server (or a
  replay server already running at ``feed.url``). Tick time is the only clock.
- :class:`AlpacaSource` is Alpaca's live stream (``iex``, ``sip`` or ``test``), on the
  wall clock of the trading day.
- :class:`HubSource` is the local hub (``tradeday hub``) sharing the account's one Alpaca
  stream among sessions: live rules on the day itself, replay rules for a past day (a
  rehearsal, the hub fed by a replay server).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect  # bound before open_client patches it

from tradeday import history, recording
from tradeday.events import MINUTE_NS, NS_PER_S, Bar, SessionWindow
from tradeday.feed import ENDPOINTS, FeedError

if TYPE_CHECKING:
    from tradeday.config import FeedConfig
    from tradeday.wiring import Credentials

log = logging.getLogger(__name__)

REPLAY_KEY = "replay"  # the embedded replay server's key and secret: it guards nothing real
OPEN_LEAD_NS = MINUTE_NS  # a live session connects this long before the open
_WAIT_SLICE_S = 300.0  # the wait for the open logs at least this often


class Endpoint:
    """A stream URL and the keys to authenticate to it; ``repr`` never shows the keys."""

    __slots__ = ("key", "secret", "url")

    def __init__(self, url: str, key: str, secret: str) -> None:
        self.url = url
        self.key = key
        self.secret = secret

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, <redacted>)"


KIND_NAMES = {"t": "trades", "q": "quotes", "b": "bars"}
NO_DATA_AFTER_S = 300.0  # a live session with no event this long after the open warns


class NoData(ValueError):
    """A session would stream nothing its model handles: refused before it starts."""


class Source(ABC):
    """A session's tick source. Construction does no I/O; :meth:`open` and :meth:`close` do.

    ``tick_clock`` is True when event times are not the wall clock's (a replay of another
    day): a real broker's wall-clock fill times are then restamped on tick time.
    """

    tick_clock: bool
    needs_keys: bool  # Alpaca keys, for the stream or the warm-up history
    backoff_base: float  # seconds before the first reconnect; doubles up to the feed's cap

    def __init__(
        self, feed: FeedConfig, window: SessionWindow, credentials: Credentials | None = None
    ) -> None:
        self.feed = feed
        self.window = window
        self.credentials = credentials
        self.stale_after_s = feed.stale_after_s

    @abstractmethod
    def open(self) -> Endpoint:
        """Where to connect, starting whatever serves it; called once per session."""

    def close(self) -> None:  # noqa: B027 - nothing to release unless something was started
        """Stop what :meth:`open` started. Idempotent."""

    @abstractmethod
    def history(self, symbols: Sequence[str]) -> list[Bar]:
        """Bars from before the open, for a model's ``warmup``; may raise (network, file)."""

    def check(self, symbols: Sequence[str], kinds: Sequence[str]) -> None:  # noqa: B027
        """Raise :class:`NoData` if it is known already that no event of ``kinds`` (the
        model's ``t``/``q``/``b``) will come for ``symbols``; a live stream cannot know."""

    def wait_for_open(self, stop: threading.Event, logger: Any = log) -> None:  # noqa: B027
        """Block until it is time to connect, or ``stop`` is set. Replays never wait."""

    def silent_since_open(self, seconds: float) -> bool:
        """Whether ``seconds`` of the session have passed on the wall clock (live only)."""
        return False

    def is_stale(self, seconds_since_frame: float) -> bool:
        """A stream silent this long is dead even though its socket is open: reconnect."""
        return seconds_since_frame > self.stale_after_s

    def past(self, stop_at_ns: int) -> bool:
        """Whether the wall clock has reached ``stop_at_ns`` (the engine watches tick time)."""
        return False


class ReplaySource(Source):
    """A recording streamed by the replay server: as fast as the client reads, or at ``speed``."""

    tick_clock = True
    needs_keys = False
    backoff_base = 0.05  # a local server: reconnect at once

    def __init__(
        self, feed: FeedConfig, window: SessionWindow, credentials: Credentials | None = None
    ) -> None:
        super().__init__(feed, window, credentials)
        self.path = Path(feed.recording) if feed.recording else None
        self._server: Any = None

    def recording_path(self) -> Path:
        """The configured recording, else the recorded day's (``recording.recorded``)."""
        return self.path or recording.recorded(self.window.day)

    def open(self) -> Endpoint:
        if self.feed.url:  # a replay server someone else runs (tests, benchmarks, a relay)
            return Endpoint(self.feed.url, REPLAY_KEY, REPLAY_KEY)
        from tradeday.replay.server import ReplayServer

        path = self.recording_path()
        self._server = ReplayServer(
            path,
            start_ns=self.window.open_ns,
            end_ns=self.window.close_ns,
            speed=self.feed.speed,
            batch=self.feed.batch,
            key=REPLAY_KEY,
            secret=REPLAY_KEY,
        ).start()
        log.info("replay server on %s streaming %s", self._server.url, path.name)
        return Endpoint(self._server.url, REPLAY_KEY, REPLAY_KEY)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def history(self, symbols: Sequence[str]) -> list[Bar]:
        return history.recorded(self.recording_path(), list(symbols), self.window)

    def check(self, symbols: Sequence[str], kinds: Sequence[str]) -> None:
        """A replay whose recording holds nothing the model handles would succeed with 0
        ticks; refuse it, naming what the recording does hold that day."""
        if self.feed.url:
            return  # someone else's server: its data is not ours to inspect
        path = self.recording_path()
        held = recording.contents(path, self.window.open_ns, self.window.close_ns)
        if any(held.get(symbol, {}).get(kind) for symbol in symbols for kind in kinds):
            return
        day = self.window.day.isoformat()
        wanted = " or ".join(KIND_NAMES[k] for k in kinds) or "no event kind"
        has = "; ".join(
            f"{symbol}: " + ", ".join(f"{n:,} {KIND_NAMES[k]}" for k, n in sorted(by_kind.items()))
            for symbol, by_kind in sorted(held.items())
        )
        raise NoData(
            f"nothing to replay: {path.name} has no {wanted} of {', '.join(symbols)} "
            f"in the {day} session (the model handles {wanted}); it holds "
            f"{has or 'no events at all that day'}. Set symbols to ones it holds, or pick a "
            "model that handles what it holds"
        )


class AlpacaSource(Source):
    """Alpaca's live market-data stream, keys from the environment or Secret blocks."""

    tick_clock = False
    needs_keys = True
    backoff_base = 0.5

    def _keys(self) -> Credentials:
        if self.credentials is None:
            raise ValueError(
                f"feed.source {self.feed.source!r} needs Alpaca keys: set APCA_API_KEY_ID and "
                "APCA_API_SECRET_KEY or the Prefect Secret blocks (docs/operations.md)"
            )
        return self.credentials

    def open(self) -> Endpoint:
        keys = self._keys()
        return Endpoint(self.feed.url or ENDPOINTS[self.feed.source], keys.key_id, keys.secret_key)

    def history(self, symbols: Sequence[str]) -> list[Bar]:
        from tradeday.record import data_client

        keys = self._keys()
        client = data_client(keys.key_id, keys.secret_key)
        rest_feed = "sip" if self.feed.source == "sip" else "iex"
        return history.live(client, list(symbols), self.window, rest_feed)

    def wait_for_open(self, stop: threading.Event, logger: Any = log) -> None:
        """Live sessions start before the open; connect a minute ahead of it."""
        while (wait := (self.window.open_ns - OPEN_LEAD_NS - time.time_ns()) / NS_PER_S) > 0:
            logger.info("waiting %.0f s for the open at %s", wait, self.window.open.isoformat())
            if stop.wait(min(wait, _WAIT_SLICE_S)):
                return

    def silent_since_open(self, seconds: float) -> bool:
        return time.time_ns() >= self.window.open_ns + int(seconds * NS_PER_S)

    def is_stale(self, seconds_since_frame: float) -> bool:
        """Silence counts only while the market is open: nothing trades before or after."""
        now = time.time_ns()
        in_hours = self.window.open_ns <= now < self.window.close_ns
        return in_hours and super().is_stale(seconds_since_frame)

    def past(self, stop_at_ns: int) -> bool:
        return time.time_ns() >= stop_at_ns


class HubSource(AlpacaSource):
    """The local hub: one upstream Alpaca connection for every session on the account.

    The stream needs the hub's local credential (``TRADEDAY_HUB_SECRET``), never the
    Alpaca keys; the warm-up history still comes from Alpaca's REST API with the keys when
    there are any. A session for a day already over is a rehearsal (the hub's upstream is
    a replay server): tick time is then the only clock, as in a replay, and the warm-up
    comes from the recording.
    """

    backoff_base = 0.5  # a restarting hub is back within seconds

    def __init__(
        self, feed: FeedConfig, window: SessionWindow, credentials: Credentials | None = None
    ) -> None:
        super().__init__(feed, window, credentials)
        self.rehearsal = window.close_ns <= time.time_ns()
        self.tick_clock = self.rehearsal

    def open(self) -> Endpoint:
        from tradeday.hub import DEFAULT_URL, HUB_KEY, SECRET_VAR

        url = self.feed.url or DEFAULT_URL
        secret = os.environ.get(SECRET_VAR)
        if not secret:
            raise FeedError(
                f"feed.source 'hub' needs the hub's local credential: set {SECRET_VAR} to the "
                "value the hub runs with (deployments/systemd/tradeday.env.example)"
            )
        _reachable(url)
        return Endpoint(url, HUB_KEY, secret)

    def history(self, symbols: Sequence[str]) -> list[Bar]:
        if self.rehearsal:
            path = Path(self.feed.recording) if self.feed.recording else None
            return history.recorded(
                path or recording.recorded(self.window.day), list(symbols), self.window
            )
        return super().history(symbols)

    def wait_for_open(self, stop: threading.Event, logger: Any = log) -> None:
        if not self.rehearsal:
            super().wait_for_open(stop, logger)

    def is_stale(self, seconds_since_frame: float) -> bool:
        if self.rehearsal:  # no market hours on tick time: the plain rule
            return Source.is_stale(self, seconds_since_frame)
        return super().is_stale(seconds_since_frame)

    def silent_since_open(self, seconds: float) -> bool:
        return not self.rehearsal and super().silent_since_open(seconds)

    def past(self, stop_at_ns: int) -> bool:
        return not self.rehearsal and super().past(stop_at_ns)


def _reachable(url: str) -> None:
    """Fail the session's start with how to fix it when no hub answers at ``url``.

    A websocket handshake up to the hub's ``connected``, then a clean close: a bare TCP
    probe would leave a handshake error in the hub's log for every session start. The
    connect function is the one bound at import: :func:`tradeday.feed.open_client` swaps
    the module's attribute while another session of this process connects.
    """
    try:
        with ws_connect(url, open_timeout=2.0, close_timeout=1.0) as ws:
            ws.recv(timeout=2.0)
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise FeedError(
            f"no tradeday hub at {url} ({getattr(exc, 'strerror', None) or exc}): start it "
            "with `tradeday hub` (or `systemctl start tradeday-hub`), or set feed.url to "
            "where it listens; docs/hub.md"
        ) from None


SOURCES: dict[str, type[Source]] = {  # feed.source -> its class
    "replay": ReplaySource,
    "iex": AlpacaSource,
    "sip": AlpacaSource,
    "test": AlpacaSource,
    "hub": HubSource,
}


def make_source(
    feed: FeedConfig, window: SessionWindow, credentials: Credentials | None = None
) -> Source:
    """The source ``feed.source`` names, for the session in ``window``; no I/O."""
    return SOURCES[feed.source](feed, window, credentials)
