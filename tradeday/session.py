"""One trading session, start to flat: the engine's lifecycle without Prefect.

The parts come from :mod:`tradeday.wiring` and the ticks from a
:class:`~tradeday.sources.Source`; this module is only the lifecycle: construct (no I/O),
:meth:`TradingSession.start` (ledger row, broker connection), :meth:`TradingSession.run`
(warm-up, wait for the open, stream), :meth:`TradingSession.shutdown` (flatten, record).

Threads: the feed thread runs cpquant's ``listen`` and the hot path (decode, model, risk,
broker, book). The caller's (main) thread runs :meth:`TradingSession.run`: it waits,
flushes ledger batches, logs heartbeats, watches for a silent stream and the close, and
is where a SIGTERM or Prefect's ``TerminationSignal`` lands. Whatever ends the run, the
caller's ``finally`` calls :meth:`TradingSession.shutdown`, which stops the feed, flattens
and records the outcome, well within Prefect's 30 s grace period.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from models.base import overnight_allowance, overrides
from tradeday import outcome, wiring
from tradeday.brokers.base import (
    AccountCloser,
    AccountOrder,
    BrokerError,
    OrderHistory,
    left_at_broker,
)
from tradeday.config import SessionConfig
from tradeday.decode import Decoder
from tradeday.engine import order_prefix
from tradeday.events import Bar, SessionWindow, Side, ns_to_datetime
from tradeday.feed import StreamFeed
from tradeday.journal import Journal
from tradeday.ledger import Ledger
from tradeday.ledger_writer import DurableWriter
from tradeday.outcome import SessionResult
from tradeday.records import CarriedRecord, CarryStatus, RunUpdate
from tradeday.sources import NO_DATA_AFTER_S, Source, make_source
from tradeday.wiring import Credentials

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
FLATTEN_TIMEOUT_S = 10.0
# a locked SQLite ledger holds the main thread this long per try (SIGTERM waits for it);
# the final status is retried this long, then journaled: all within Prefect's 30 s
LEDGER_BUSY_TIMEOUT_S = 2.0
LEDGER_FINISH_TIMEOUT_S = 5.0


def new_run_id(day: str) -> str:
    return f"td-{day.replace('-', '')}-{uuid.uuid4().hex[:8]}"


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
        observers: Sequence[Callable[[TradingSession], None]] = (),
        source: Source | None = None,
    ) -> None:
        self.config = config
        self.window = window
        self.day = window.day.isoformat()
        self.run_id = run_id or new_run_id(self.day)
        self.log = logger or log
        self.on_progress = on_progress
        self.observers = list(observers)
        self.model_name = config.model.name
        self.account = wiring.account_of(config, credentials)
        self.source = source or make_source(config.feed, window, credentials)
        parts = wiring.build(
            config,
            window,
            run_id=self.run_id,
            credentials=credentials,
            tick_clock=self.source.tick_clock,
        )
        self.model = parts.model
        self.book = parts.book
        self.broker = parts.broker
        self.engine = parts.engine
        self.subscriptions = parts.subscriptions
        self.stop_at_ns = wiring.stop_at_ns(config, window)
        self.decoder = Decoder(self.engine.on_events, self._on_control)
        self.ledger: Ledger | None = None
        self.writer: DurableWriter | None = None
        self.feed: StreamFeed | None = None
        self.status = "running"
        self.message = ""
        self._finished = False
        self.deployment = deployment
        self.flow_run_id = flow_run_id
        self.started_ns = 0
        self.carried_in: list[CarriedRecord] = []  # what it took up from an earlier session
        self.carried_out: list[CarriedRecord] = []  # what it holds for the next one
        self.queued_out: list[CarriedRecord] = []  # its closes the broker queued for the open

    def __repr__(self) -> str:
        return f"TradingSession({self.run_id}, {self.model_name}, {self.day})"

    def start(self) -> None:
        """Record the run in the ledger, then connect the broker. Idempotent."""
        if self.ledger is not None:
            return
        config = self.config
        self.started_ns = time.time_ns()
        self.ledger = Ledger(config.ledger_url, busy_timeout_s=LEDGER_BUSY_TIMEOUT_S)
        self.ledger.start_run(
            run_id=self.run_id,
            session_date=self.day,
            model=self.model_name,
            params=config.model.model_dump(mode="json"),
            symbols=list(config.symbols),
            feed=config.feed.source,
            broker=config.broker.kind,
            account=self.account,
            started_ns=self.started_ns,
            heartbeat_ns=time.time_ns(),
            deployment=self.deployment,
            flow_run_id=self.flow_run_id,
            counters={},
        )
        self.writer = DurableWriter(
            self.ledger, self.run_id, Journal.for_ledger(config.ledger_url), logger=self.log
        )
        self.broker.start()
        self._take_carried()

    def _take_carried(self) -> None:
        """Open the book with what this model's last session on the account held overnight.

        At its cost, so the risk limits count it and selling it realizes the move since it
        was bought; its positions are written at once, so a crash from here on is
        recovered with them (:mod:`tradeday.recovery`).
        """
        assert self.ledger is not None and self.writer is not None
        self.carried_in = self.ledger.take_carried(
            self.model_name, self.config.broker.kind, self.account, self.run_id, time.time_ns()
        )
        if not self.carried_in:
            return
        for row in self.carried_in:
            self.book.carry(row.symbol, row.qty, row.cost, row.mark)
            self.broker.carry(row.symbol, row.qty, row.cost)
        self.engine.watch_open([row.symbol for row in self.carried_in], self.window.open_ns)
        self.writer.write(self.engine.take_batch(positions=True))
        self.log.info(
            "took up positions held overnight: %s",
            ", ".join(
                f"{r.symbol} {r.qty} at {r.cost:g} (from {r.from_run_id})" for r in self.carried_in
            ),
        )

    # -- feed -----------------------------------------------------------------------------

    def _on_control(self, msg: dict) -> None:
        if self.feed is not None:
            self.feed.on_control(msg)

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Tick-time spans lost to reconnects, (last event before, first event after)."""
        return self.feed.gaps if self.feed is not None else []

    def _history(self) -> list[Bar]:
        """Bars before the open; a failure costs only the warm-up, never the session."""
        try:
            return self.source.history(self.config.symbols)
        except Exception as exc:  # network, a missing file: trade without the warm-up
            self.log.warning("warm-up skipped: %s: %s", type(exc).__name__, exc)
            return []

    # -- main thread ----------------------------------------------------------------------

    def run(self) -> None:
        """Stream until the close (less the buffer), the end of the recording, or a stop."""
        self.start()
        self.source.check(self.config.symbols, wiring.handled_kinds(self.model))
        if overrides(self.model, "warmup"):
            history = self._history()
            self.log.info("warm-up: %d bars before the open", len(history))
            self.model.warmup(history)
        self.engine.start(self.window, wiring.start_ns(self.window, self.source.tick_clock))
        self.source.wait_for_open(self.engine.stop_requested, self.log)
        if self.engine.stop_requested.is_set():
            return
        endpoint = self.source.open()
        cfg, subs = self.config, self.subscriptions
        self.feed = StreamFeed(
            endpoint.url,
            endpoint.key,
            endpoint.secret,
            cfg.symbols,
            self.decoder,
            trades=subs.trades,
            quotes=subs.quotes,
            bars=subs.bars,
            backoff_base=self.source.backoff_base,
            clock=lambda: self.engine.clock,
            logger=self.log,
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
        warned_no_data = False
        while not self.engine.stop_requested.wait(0.2):
            now = time.monotonic()
            if self.feed.ended.is_set():
                if self.feed.error is not None:
                    raise self.feed.error
                self.engine.request_stop(self.feed.end_reason or "feed ended")
                break
            if self.source.past(self.stop_at_ns):
                self.engine.request_stop("close")
                break
            if (
                not warned_no_data
                and self._no_data()
                and self.source.silent_since_open(NO_DATA_AFTER_S)
            ):
                warned_no_data = True
                self.log.warning(
                    "no events for %s %.0f s after the open", ",".join(cfg.symbols), NO_DATA_AFTER_S
                )
            if self.source.is_stale(self.feed.seconds_since_frame()):
                self.feed.force_reconnect(f"no data for {self.source.stale_after_s:.0f} s")
                self.feed.last_frame = time.monotonic()
            if now - last_flush >= FLUSH_SECONDS:
                self.flush()
                last_flush = now
            if now - last_beat >= cfg.heartbeat_seconds:
                self.log.info("heartbeat: %s", self._heartbeat())
                last_beat = now
        if self.engine.halt_pending:  # the engine flattened at the trip and asked to stop
            self.log.error("kill switch: %s; stopped for the day", self.engine.risk.halted_reason)

    def counters(self) -> dict[str, Any]:
        return outcome.counters(self.decoder.stats, self.feed, self.engine)

    def _heartbeat(self) -> str:
        return outcome.heartbeat(self.counters(), self.book, self.engine.clock)

    def flush(self, *, positions: bool = False, carried: Sequence[CarriedRecord] = ()) -> None:
        """Hand what the engine buffered to the ledger writer; main thread, never per tick.

        The writer keeps what the ledger refuses; how long it has refused is the risk
        gate's ``max_ledger_outage_minutes`` input. Then the ``observers`` (the live view,
        events) see the session, here on the main thread, never per tick; the last call
        comes from :meth:`shutdown`, with :attr:`status` no longer ``running``.
        """
        assert self.writer is not None, "flush() before start()"
        batch = self.engine.take_batch(positions=positions)
        batch.carried = list(carried)
        batch.run_update = RunUpdate(heartbeat_ns=time.time_ns(), counters=self.counters())
        self.writer.write(batch)
        self.engine.risk.ledger_outage_s = self.writer.outage_seconds()
        if self.on_progress is not None and self.engine.clock:
            span = self.stop_at_ns - self.window.open_ns
            self.on_progress(max(0.0, min(1.0, (self.engine.clock - self.window.open_ns) / span)))
        for observe in self.observers:
            try:
                observe(self)
            except Exception as exc:  # a view of the session never stops it
                self.log.warning("observer %r failed: %s: %s", observe, type(exc).__name__, exc)

    def shutdown(self, status: str, message: str = "") -> SessionResult:
        """Stop the feed, flatten this session's positions, record the outcome. Idempotent."""
        if self._finished:
            return self.result()
        self._finished = True
        t0 = time.monotonic()
        if self.feed is not None:
            self.feed.stop()
        self.source.close()
        self.status = status
        reason = self.engine.stop_reason
        self.message = message or (f"ended at {reason}" if reason else status)
        if self.ledger is None:  # it never started: nothing was sent, nothing to record
            self.broker.close()
            return self.result()
        deadline = time.monotonic() + FLATTEN_TIMEOUT_S
        self.engine.cancel_working()  # resting limits and auction orders would never fill
        self.broker.flush(self.engine.clock)  # a simulator settles what it still holds
        self._settle(deadline)  # a real broker's in-flight orders land before we offset
        hold = self._overnight_hold()
        sent = self.engine.flatten(hold)
        if sent:
            self.log.info("flatten: sent %s", sent)
        self.broker.flush(self.engine.clock)
        self._settle(deadline, hold=hold)
        if self.config.broker.owns_account and isinstance(self.broker, AccountCloser):
            self.message += self._close_account(self.broker, deadline)
        left = {s: q for s, q in self.book.open_positions().items() if abs(q) > hold}
        self.queued_out = self._queued_closes(left, hold)
        queued = {r.symbol: r.qty for r in self.queued_out}
        left = {s: q for s, q in left.items() if s not in queued}
        if left:
            self._fail(f"NOT FLAT after {FLATTEN_TIMEOUT_S:.0f} s: {left}")
        elif hold:
            self.carried_out = self._carry_out(queued)
        elif (
            not queued
            and isinstance(self.broker, OrderHistory)
            and (stray := left_at_broker(self.broker, order_prefix(self.run_id), self.started_ns))
        ):
            self._fail(f"the broker still has this session's {stray}")
        if self._no_data():
            self.message += f"; received no events for {','.join(self.config.symbols)}"
        self.flush(positions=True, carried=self._carried_rows())
        assert self.writer is not None
        self.writer.finish(
            self.status,
            self.message,
            time.time_ns(),
            self.counters(),
            timeout_s=LEDGER_FINISH_TIMEOUT_S,
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

    def _overnight_hold(self) -> int:
        """What may stay open per symbol: the model's allowance at a normal end only.

        A cancel, a SIGTERM, a failure and the kill switch end flat (docs/operations.md,
        "Positions held overnight"), and so does an owned account, which is closed whole.
        """
        if (
            self.status != "completed"
            or self.engine.halt_pending
            or self.config.broker.owns_account
        ):
            return 0
        return overnight_allowance(self.config.model)

    def _queued_closes(self, left: dict[str, int], hold: int) -> list[CarriedRecord]:
        """The positions in ``left`` whose flatten the broker queued for the next open.

        A market order sent while the market is closed (a live session cancelled after
        hours) is accepted and waits for the open: the position is neither flat nor lost.
        Each such position becomes a ``queued`` carried row naming its orders, so nothing
        sends a second close and the next session's recovery confirms the fill
        (:func:`tradeday.recovery.close_carried`). Only when the broker's working orders of
        this run offset exactly what is beyond ``hold``; anything else stays NOT FLAT.
        """
        if not left or not isinstance(self.broker, OrderHistory):
            return []
        working: dict[str, list[AccountOrder]] = {}
        try:
            if self.broker.market_open():
                return []
            for order in self.broker.orders_of(order_prefix(self.run_id), self.started_ns):
                if order.working:
                    working.setdefault(order.symbol, []).append(order)
        except BrokerError as err:  # cannot tell: what is left stays NOT FLAT
            self.log.error("could not ask the broker about the queued flatten: %s", err)
            return []
        rows = []
        for symbol, qty in sorted(left.items()):
            orders = working.get(symbol, [])
            closing = sum(
                (o.qty - o.filled_qty) * (1 if o.side is Side.BUY else -1) for o in orders
            )
            excess = qty - max(-hold, min(hold, qty))
            if not orders or closing != -excess:
                continue
            rows.append(
                self._carried(
                    f"{self.run_id}/{symbol}/close",
                    symbol,
                    excess,
                    carried_ns=self.engine.clock or time.time_ns(),
                    status=CarryStatus.QUEUED,
                    message="flatten queued for the next open "
                    f"({', '.join(o.client_order_id for o in orders)})",
                )
            )
        if rows:
            queued = {r.symbol: -r.qty for r in rows}
            self.message += f"; flatten queued for the next open: {queued}"
            self.log.warning("market closed: flatten queued for the next open: %s", queued)
        return rows

    def _carried(self, carry_id: str, symbol: str, qty: int, **rest: Any) -> CarriedRecord:
        """A carried row of this run for ``qty`` of ``symbol``, at the book's cost and mark."""
        cost = self.book.positions[symbol].avg_price
        return CarriedRecord(
            carry_id=carry_id,
            model=self.model_name,
            broker=self.config.broker.kind,
            account=self.account,
            symbol=symbol,
            qty=qty,
            cost=cost,
            mark=self.book.marks.get(symbol, cost),
            from_run_id=self.run_id,
            session_date=self.day,
            **rest,
        )

    def _carry_out(self, queued: dict[str, int]) -> list[CarriedRecord]:
        """The positions left open (within the allowance), less what is ``queued`` to close,
        as carried for the next session."""
        held = {
            s: q - queued.get(s, 0)
            for s, q in sorted(self.book.open_positions().items())
            if q != queued.get(s, 0)
        }
        rows = [
            self._carried(f"{self.run_id}/{symbol}", symbol, qty, carried_ns=self.engine.clock)
            for symbol, qty in held.items()
        ]
        if rows:
            self.message += f"; held overnight {held}"
            self.log.info("held overnight for the next %s session: %s", self.model_name, held)
        return rows

    def _carried_rows(self) -> list[CarriedRecord]:
        """What goes in the carried ledger table at the end: the positions carried out, and
        those taken up with the official open this session saw for them."""
        for row in self.carried_in:
            row.open_price = self.engine.opens.get(row.symbol)
        return [*self.carried_in, *self.carried_out, *self.queued_out]

    def _no_data(self) -> bool:
        stats = self.decoder.stats
        return stats.trades + stats.quotes + stats.bars == 0

    def _fail(self, what: str) -> None:
        """Shutdown found the session not clean: a completed run becomes failed, and says why."""
        self.status = "failed" if self.status == "completed" else self.status
        self.message += f"; {what}"
        self.log.error("%s", what)

    def _settle(self, deadline: float, *, hold: int | None = None) -> None:
        """Wait (until ``deadline``) for no order in flight and, with ``hold``, no position
        larger than that."""

        def beyond() -> bool:
            return hold is not None and any(
                abs(q) > hold for q in self.book.open_positions().values()
            )

        while (self.engine.open_orders() or beyond()) and time.monotonic() < deadline:
            time.sleep(0.05)
            self.engine.drain()

    def _close_account(self, broker: AccountCloser, deadline: float) -> str:
        """A session that owns its account closes everything else in it too.

        After this session's own flatten, so its own positions still close with its own,
        recorded orders.
        """
        try:
            statuses = broker.close_all_positions()
            left = broker.wait_until_flat(timeout=max(1.0, deadline - time.monotonic()))
        except BrokerError as err:  # shutdown must still record the run
            left = err
        if isinstance(left, BrokerError) or not left.flat:
            self._fail(f"account NOT FLAT after close-all: {left}")
            return ""
        self.log.warning("owns the account: closed every position in it: %s", statuses or "none")
        return f"; closed the whole account ({len(statuses)} positions)" if statuses else ""

    def result(self) -> SessionResult:
        return SessionResult.of(
            self.run_id,
            self.day,
            self.model_name,
            self.status,
            self.message,
            self.counters(),
            self.book,
            {r.symbol: r.qty for r in self.carried_out},
        )

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
