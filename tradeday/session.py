"""One trading session, start to flat: the engine's lifecycle without Prefect.

Threads: the feed thread runs cpquant's ``listen`` and the hot path (decode, model, risk,
broker, book). The caller's (main) thread runs :meth:`TradingSession.run`: it waits,
flushes ledger batches, logs heartbeats, watches for a silent stream and the close, and
is where a SIGTERM or Prefect's ``TerminationSignal`` lands. Whatever ends the run, the
caller's ``finally`` calls :meth:`TradingSession.shutdown`, which stops the feed, flattens
and records the outcome, well within Prefect's 30 s grace period.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import models
from tradeday import history, recording
from tradeday.book import Book
from tradeday.brokers.base import Broker
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import SessionConfig
from tradeday.decode import Decoder
from tradeday.engine import Engine
from tradeday.events import NS_PER_S, Bar, SessionWindow, ns_to_datetime
from tradeday.feed import ENDPOINTS, StreamFeed
from tradeday.ledger import Ledger
from tradeday.record import data_client
from tradeday.risk import RiskGate

log = logging.getLogger(__name__)

REPLAY_KEY = "replay"
FLUSH_SECONDS = 1.0
FLATTEN_TIMEOUT_S = 10.0


class Credentials:
    """Alpaca keys; ``repr`` never shows them."""

    __slots__ = ("key_id", "secret_key")

    def __init__(self, key_id: str, secret_key: str) -> None:
        self.key_id = key_id
        self.secret_key = secret_key

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


@dataclass
class SessionResult:
    run_id: str
    session_date: str
    model: str
    status: str
    message: str
    ticks: int
    skipped: int
    reconnects: int
    orders: int
    fills: int
    risk_rejections: int
    final_positions: dict[str, int]
    realized: float
    fees: float
    net: float
    counters: dict[str, Any] = field(default_factory=dict)


def new_run_id(day: str) -> str:
    return f"td-{day.replace('-', '')}-{uuid.uuid4().hex[:8]}"


def account_of(config: SessionConfig, credentials: Credentials | None) -> str:
    """Which broker account a run trades in: recovery only touches runs of the same account."""
    if config.broker.kind == "simulated":
        return "simulated"
    assert credentials is not None
    digest = hashlib.sha256(credentials.key_id.encode()).hexdigest()[:12]
    return f"{config.broker.alpaca_url}#{digest}"


def make_broker(config: SessionConfig, credentials: Credentials | None) -> Broker:
    b = config.broker
    if b.kind == "simulated":
        return SimulatedBroker(
            b.starting_cash, b.latency_ms, b.slippage_bps, b.commission_per_share
        )
    if credentials is None:
        raise ValueError(
            "broker.kind is 'alpaca' but no Alpaca keys were found: set APCA_API_KEY_ID and "
            "APCA_API_SECRET_KEY, or create the Prefect Secret blocks named in docs/operations.md"
        )
    from tradeday.brokers.alpaca import AlpacaPaperBroker

    return AlpacaPaperBroker(credentials.key_id, credentials.secret_key, base_url=b.alpaca_url)


class TradingSession:
    def __init__(
        self,
        config: SessionConfig,
        window: SessionWindow,
        *,
        run_id: str | None = None,
        credentials: Credentials | None = None,
        flow_run_id: str = "",
        deployment: str = "",
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.window = window
        self.day = window.day.isoformat()
        self.run_id = run_id or new_run_id(self.day)
        self.credentials = credentials
        self.log = logger or log
        self.on_progress = on_progress
        self.model_name = config.model.name
        self.replay = config.feed.source == "replay"
        self.stop_at_ns = window.close_ns - int(config.close_buffer_minutes * 60 * NS_PER_S)
        self.account = account_of(config, credentials)
        self.ledger = Ledger(config.ledger_url)
        self.broker = make_broker(config, credentials)
        self.book = Book(config.broker.starting_cash)
        model_cls = models.get(self.model_name)
        self.model = model_cls(config.model, config.symbols)
        self.engine = Engine(
            self.run_id,
            self.model,
            self.broker,
            RiskGate(config.risk, self.book),
            self.book,
            model_name=self.model_name,
            stop_at_ns=self.stop_at_ns,
            fills_on_tick_time=self.replay and config.broker.kind != "simulated",
        )
        self.decoder = Decoder(self.engine.on_events, self._on_control)
        self._server: Any = None
        self.feed: StreamFeed | None = None
        self._gap_from: int | None = None
        self.gaps: list[tuple[int, int]] = []
        self.status = "running"
        self.message = ""
        self._finished = False
        self.started_ns = time.time_ns()
        self.ledger.start_run(
            run_id=self.run_id,
            session_date=self.day,
            model=self.model_name,
            params=config.model.model_dump(mode="json"),
            symbols=list(config.symbols),
            feed=config.feed.source,
            broker=config.broker.kind,
            account=self.account,
            deployment=deployment,
            flow_run_id=flow_run_id,
            started_ns=self.started_ns,
            heartbeat_ns=time.time_ns(),
            counters={},
        )

    def __repr__(self) -> str:
        return f"TradingSession({self.run_id}, {self.model_name}, {self.day})"

    # -- feed -----------------------------------------------------------------------------

    def _on_control(self, msg: dict) -> None:
        if self.feed is not None:
            self.feed.on_control(msg)

    def _on_reconnect(self) -> None:
        self._gap_from = self.engine.clock

    def _on_resume(self) -> bool:
        """First data after a reconnect: the tick time between is a gap; True once noted."""
        if self._gap_from is None:
            return True
        if self.engine.clock <= self._gap_from:
            return False
        self.gaps.append((self._gap_from, self.engine.clock))
        self.log.warning(
            "feed gap: no data from %s to %s after a reconnect",
            ns_to_datetime(self._gap_from).isoformat(),
            ns_to_datetime(self.engine.clock).isoformat(),
        )
        self._gap_from = None
        return True

    def _stream_url(self) -> tuple[str, str, str]:
        feed = self.config.feed
        if self.replay:
            if feed.url:
                return feed.url, REPLAY_KEY, REPLAY_KEY
            from tradeday.replay.server import ReplayServer

            path = Path(feed.recording) if feed.recording else recording.bundled(self.window.day)
            self._server = ReplayServer(
                path,
                start_ns=self.window.open_ns,
                end_ns=self.window.close_ns,
                speed=feed.speed,
                batch=feed.batch,
                key=REPLAY_KEY,
                secret=REPLAY_KEY,
            ).start()
            self.log.info("replay server on %s streaming %s", self._server.url, path.name)
            return self._server.url, REPLAY_KEY, REPLAY_KEY
        if self.credentials is None:
            raise ValueError(
                f"feed.source {feed.source!r} needs Alpaca keys: set APCA_API_KEY_ID and "
                "APCA_API_SECRET_KEY or the Prefect Secret blocks (docs/operations.md)"
            )
        return (
            feed.url or ENDPOINTS[feed.source],
            self.credentials.key_id,
            self.credentials.secret_key,
        )

    def _history(self) -> list[Bar]:
        """Bars before the open; a failure costs only the warm-up, never the session."""
        try:
            if self.replay:
                path = Path(self.config.feed.recording or recording.bundled(self.window.day))
                return history.recorded(path, list(self.config.symbols), self.window)
            assert self.credentials is not None
            client = data_client(self.credentials.key_id, self.credentials.secret_key)
            feed = "sip" if self.config.feed.source == "sip" else "iex"
            return history.live(client, list(self.config.symbols), self.window, feed)
        except Exception as exc:  # network, a missing file: trade without the warm-up
            self.log.warning("warm-up skipped: %s: %s", type(exc).__name__, exc)
            return []

    def _wait_for_open(self) -> None:
        """Live sessions start before the open; connect a minute ahead of it."""
        if self.replay:
            return
        lead_ns = 60 * NS_PER_S
        while (wait := (self.window.open_ns - lead_ns - time.time_ns()) / NS_PER_S) > 0:
            self.log.info("waiting %.0f s for the open at %s", wait, self.window.open.isoformat())
            if self.engine.stop_requested.wait(min(wait, 300.0)):
                return

    # -- main thread ----------------------------------------------------------------------

    def run(self) -> None:
        """Stream until the close (less the buffer), the end of the recording, or a stop."""
        if _overrides(self.model, "warmup"):
            history = self._history()
            self.log.info("warm-up: %d bars before the open", len(history))
            self.model.warmup(history)
        self.model.on_start(self.window)
        self._wait_for_open()
        if self.engine.stop_requested.is_set():
            return
        url, key, secret = self._stream_url()
        cfg = self.config
        self.feed = StreamFeed(
            url,
            key,
            secret,
            cfg.symbols,
            self.decoder,
            trades=True,
            quotes=_overrides(self.model, "on_quote") or cfg.broker.kind == "simulated",
            bars=_overrides(self.model, "on_bar"),
            backoff_base=0.05 if self.replay else 0.5,
            on_reconnect=self._on_reconnect,
            on_resume=self._on_resume,
        )
        self.feed.start()
        self.log.info(
            "streaming %s for %s with %s until %s",
            ",".join(cfg.symbols),
            self.model_name,
            cfg.broker.kind,
            ns_to_datetime(self.stop_at_ns).isoformat(),
        )
        last_flush = last_beat = time.monotonic()
        while not self.engine.stop_requested.wait(0.2):
            now = time.monotonic()
            if self.feed.ended.is_set():
                if self.feed.error is not None:
                    raise self.feed.error
                self.engine.request_stop(self.feed.end_reason or "feed ended")
                break
            if not self.replay and time.time_ns() >= self.stop_at_ns:
                self.engine.request_stop("close")
                break
            if self.feed.seconds_since_frame() > cfg.feed.stale_after_s and self._market_hours():
                self.feed.force_reconnect(f"no data for {cfg.feed.stale_after_s:.0f} s")
                self.feed.last_frame = time.monotonic()
            if now - last_flush >= FLUSH_SECONDS:
                self.flush()
                last_flush = now
            if now - last_beat >= cfg.heartbeat_seconds:
                self.log.info("heartbeat: %s", self._heartbeat())
                last_beat = now
        if self.engine.halt_pending:  # the engine flattened at the trip and asked to stop
            self.log.error("kill switch: %s; stopped for the day", self.engine.risk.halted_reason)

    def _market_hours(self) -> bool:
        if self.replay:
            return True
        now = time.time_ns()
        return self.window.open_ns <= now < self.window.close_ns

    def counters(self) -> dict[str, Any]:
        d = self.decoder.stats
        f = self.feed.stats if self.feed else None
        e = self.engine.stats
        return {
            "ticks": d.trades + d.quotes + d.bars,
            "trades": d.trades,
            "quotes": d.quotes,
            "bars": d.bars,
            "frames": d.frames,
            "skipped": d.skipped,
            "malformed_frames": d.malformed_frames,
            "unknown_messages": d.unknown_messages,
            "bad_messages": d.bad_messages,
            "out_of_order": d.out_of_order,
            "after_stop": e.after_stop,
            "reconnects": f.reconnects if f else 0,
            "drops": f.drops if f else 0,
            "stale_reconnects": f.stale_reconnects if f else 0,
            "gaps": len(self.gaps),
            "gap_seconds": round(sum(b - a for a, b in self.gaps) / NS_PER_S, 6),
            "orders": e.orders,
            "fills": e.fills,
            "rejections": e.rejections,
            "risk_rejections": e.risk_rejections,
            "risk_rejections_by_limit": dict(self.engine.risk.counts),
        }

    def _heartbeat(self) -> str:
        c = self.counters()
        return (
            f"ticks={c['ticks']} skipped={c['skipped']} reconnects={c['reconnects']} "
            f"orders={c['orders']} fills={c['fills']} risk_rejections={c['risk_rejections']} "
            f"positions={self.book.open_positions()} net={self.book.net():.2f} "
            f"clock={ns_to_datetime(self.engine.clock).isoformat() if self.engine.clock else '-'}"
        )

    def flush(self, *, positions: bool = False) -> None:
        """Write what the engine buffered; runs on the main thread, never per tick."""
        batch = self.engine.take_batch(positions=positions)
        batch.run_update = {"heartbeat_ns": time.time_ns(), "counters": self.counters()}
        self.ledger.write(batch, self.run_id)
        if self.on_progress is not None and self.engine.clock:
            span = self.stop_at_ns - self.window.open_ns
            self.on_progress(max(0.0, min(1.0, (self.engine.clock - self.window.open_ns) / span)))

    def shutdown(self, status: str, message: str = "") -> SessionResult:
        """Stop the feed, flatten this session's positions, record the outcome. Idempotent."""
        if self._finished:
            return self.result()
        self._finished = True
        t0 = time.monotonic()
        if self.feed is not None:
            self.feed.stop()
        if self._server is not None:
            self._server.stop()
        deadline = time.monotonic() + FLATTEN_TIMEOUT_S
        self.broker.flush(self.engine.clock)  # a simulator settles what it still holds
        self._settle(deadline)  # a real broker's in-flight orders land before we offset
        sent = self.engine.flatten()
        if sent:
            self.log.info("flatten: sent %s", sent)
        self.broker.flush(self.engine.clock)
        self._settle(deadline, flat=True)
        self.status = status
        reason = self.engine.stop_reason
        self.message = message or (f"ended at {reason}" if reason else status)
        if self.config.broker.owns_account and self.config.broker.kind == "alpaca":
            self.message += self._close_account(deadline)
        left = self.book.open_positions()
        if left:
            self.status = "failed" if status == "completed" else status
            self.message += f"; NOT FLAT after {FLATTEN_TIMEOUT_S:.0f} s: {left}"
            self.log.error("positions left open: %s", left)
        elif self.config.broker.kind == "alpaca" and (stray := self._left_at_broker()):
            self.status = "failed" if status == "completed" else status
            self.message += f"; the broker still has this session's {stray}"
            self.log.error("left at the broker: %s", stray)
        self.flush(positions=True)
        self.ledger.finish_run(
            self.run_id, self.status, self.message, time.time_ns(), self.counters()
        )
        self.broker.close()
        self.log.info(
            "session %s %s in %.2f s after stop: %s",
            self.run_id,
            self.status,
            time.monotonic() - t0,
            self._heartbeat(),
        )
        return self.result()

    def _settle(self, deadline: float, *, flat: bool = False) -> None:
        """Wait (until ``deadline``) for no order in flight and, with ``flat``, no position."""
        while (
            self.engine.open_orders() or (flat and self.book.open_positions())
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
            self.engine.drain()

    def _close_account(self, deadline: float) -> str:
        """A session that owns its Alpaca account closes everything else in it too.

        ``DELETE /v2/positions?cancel_orders=true`` after this session's own flatten, so
        its own positions still close with its own, recorded orders.
        """
        from tradeday.brokers.alpaca import AlpacaError, AlpacaPaperBroker

        assert isinstance(self.broker, AlpacaPaperBroker)
        try:
            statuses = self.broker.close_all_positions()
            left = self.broker.wait_until_flat(timeout=max(1.0, deadline - time.monotonic()))
        except AlpacaError as err:  # shutdown must still record the run
            return self._account_not_flat(str(err))
        if not left.flat:
            return self._account_not_flat(str(left))
        self.log.warning("owns the account: closed every position in it: %s", statuses or "none")
        return f"; closed the whole account ({len(statuses)} positions)" if statuses else ""

    def _account_not_flat(self, what: str) -> str:
        self.status = "failed" if self.status == "completed" else self.status
        self.log.error("owns the account, but it is not flat: %s", what)
        return f"; account NOT FLAT after close-all: {what}"

    def _left_at_broker(self) -> str:
        """Ask the broker, not the book: this session's open orders and net filled position."""
        from tradeday.brokers.alpaca import AlpacaError, AlpacaPaperBroker

        assert isinstance(self.broker, AlpacaPaperBroker)
        try:
            mine = self.broker.orders_of(f"{self.run_id}-", since_ns=self.started_ns)
        except AlpacaError as err:  # shutdown must still record the run
            return f"unverified orders ({err})"
        net: dict[str, int] = {}
        for order in mine:
            net[order.symbol] = net.get(order.symbol, 0) + order.signed_filled
        working = sorted(o.client_order_id for o in mine if o.working)
        held = {s: q for s, q in net.items() if q}
        parts = [f"open orders {working}"] if working else []
        return ", ".join(parts + ([f"positions {held}"] if held else []))

    def result(self) -> SessionResult:
        c = self.counters()
        return SessionResult(
            run_id=self.run_id,
            session_date=self.day,
            model=self.model_name,
            status=self.status,
            message=self.message,
            ticks=c["ticks"],
            skipped=c["skipped"],
            reconnects=c["reconnects"],
            orders=c["orders"],
            fills=c["fills"],
            risk_rejections=c["risk_rejections"],
            final_positions=self.book.open_positions(),
            realized=round(self.book.realized, 6),
            fees=round(self.book.fees, 6),
            net=round(self.book.net(), 6),
            counters=c,
        )

    def close(self) -> None:
        self.ledger.close()


def _overrides(model: models.Model, callback: str) -> bool:
    return getattr(type(model), callback) is not getattr(models.Model, callback)


def result_dict(result: SessionResult) -> dict[str, Any]:
    return asdict(result)
