"""The hot path: events into the model, its orders through risk to the broker, fills into the book.

Everything here runs on the feed thread, once per event, so it does no I/O, no Prefect
call and no validation: ledger rows are buffered and taken by :meth:`Engine.take_batch`
from the session's main thread. The engine is also usable without any feed (golden
tests and backtests call :meth:`on_events` directly).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models.base import Model, overrides
from tradeday.book import Book
from tradeday.brokers.base import Broker, BrokerOrder, ExecType, Execution
from tradeday.events import (
    MINUTE_NS,
    Bar,
    Cancel,
    Fill,
    Intent,
    Order,
    Quote,
    SessionWindow,
    Side,
    TimeInForce,
    Trade,
)
from tradeday.records import (
    Batch,
    FillRecord,
    MarkRecord,
    OrderRecord,
    OrderStatus,
    PositionRecord,
    RiskEventRecord,
)
from tradeday.risk import RiskGate

_NEVER = 2**63  # stop time of an engine that has none
_AUCTIONS = (TimeInForce.OPG, TimeInForce.CLS)


def order_prefix(run_id: str) -> str:
    """What every ``client_order_id`` of a run starts with: the broker, recovery and the
    hub's trade-update routing tell a run's orders from the account's others by it."""
    return f"{run_id}-"


class _Kinds(dict[type, str]):
    """Event class to ``t``, ``q`` or ``b``, learnt on first sight.

    One dict look-up per event: ``isinstance`` against a msgspec Struct class goes through
    its metaclass's ``__instancecheck__``, twice the cost, on every event.
    """

    def __missing__(self, cls: type) -> str:
        kind = "t" if issubclass(cls, Trade) else "q" if issubclass(cls, Quote) else "b"
        self[cls] = kind
        return kind


_KINDS = _Kinds()


def _hook_of(broker: Broker, hook: str) -> Callable[..., None] | None:
    """``broker``'s market-data ``hook``, or None when it keeps :class:`Broker`'s no-op."""
    if getattr(type(broker), hook) is getattr(Broker, hook):
        return None
    return getattr(broker, hook)


class EventError(RuntimeError):
    """Handling a market event raised: most often a bug in the model, named in the message."""


@dataclass
class EngineStats:
    events: int = 0
    orders: int = 0
    fills: int = 0
    rejections: int = 0
    risk_rejections: int = 0
    after_stop: int = 0


class Engine:
    def __init__(
        self,
        run_id: str,
        model: Model,
        broker: Broker,
        risk: RiskGate,
        book: Book,
        *,
        model_name: str,
        stop_at_ns: int | None = None,
        fills_on_tick_time: bool = False,
    ) -> None:
        self.run_id = run_id
        self.model = model
        self.model_name = model_name
        self.broker = broker
        self.risk = risk
        self.book = book
        self.stop_at_ns = stop_at_ns
        # a real broker over a replay: its wall-clock fill times are years off the ticks
        self.fills_on_tick_time = fills_on_tick_time
        self.clock = 0
        self.stats = EngineStats()
        self.stop_requested = threading.Event()
        self.stop_reason = ""
        self.halt_pending = False
        self._seq = 0
        self._open: dict[str, OrderRecord] = {}
        self._new_orders: deque[OrderRecord] = deque()
        self._dirty: set[str] = set()
        self._fills: deque[FillRecord] = deque()
        self._risk_events: deque[RiskEventRecord] = deque()
        self._marks: deque[MarkRecord] = deque()
        self._next_minute_ns = 0  # end of the tick-time minute in progress (0: none yet)
        self._marked_ns = -1  # start of the last minute whose marks are buffered
        self._lock = threading.Lock()
        # the kill switch's net P&L moves only with a fill or a mark: check it only then
        self._net_moved = True
        # interface v2 hooks, None when the model does not override them: then a fill or a
        # rejection costs what it did before they existed, and no order is remembered
        self._on_fill = model.on_fill if overrides(model, "on_fill") else None
        self._on_reject = model.on_reject if overrides(model, "on_reject") else None
        self._intents: dict[str, Order] = {}  # the model's own orders, while hooks need them
        self._may_not_fill: set[str] = set()  # limits and auction orders: canceled at the end
        self._in_reject = False  # routing what on_reject returned
        self._retries: set[str] = set()  # orders on_reject sent: their refusal is not reported
        self._closing = False  # flatten has begun: no more model callbacks
        # carried symbols whose official open (first trade, or first bar's open, at or
        # after the open) is still to be seen: the night's P&L ends there
        self._awaiting_open: set[str] = set()
        self._open_ns = 0
        self.opens: dict[str, float] = {}
        # a real broker ignores market data: not calling its no-op hook saves a call a tick
        self._broker_on_trade = _hook_of(broker, "on_trade")

    # -- market events (feed thread) ------------------------------------------------------

    def on_events(self, events: Sequence[Trade | Quote | Bar]) -> None:
        """A frame's events in order: tick time, the broker's fills, then the model.

        One lock and one set of look-ups per frame, not per event: this loop is the whole
        per-tick cost of a session besides decoding, so it is written out flat. Anything
        raised while handling an event comes out as :class:`EventError` naming the event
        and the model, so the session ends with that message (and flattens) instead of the
        feed mistaking it for a dropped connection.
        """
        stats = self.stats
        stop_at = self.stop_at_ns if self.stop_at_ns is not None else _NEVER
        book = self.book
        marks = book.marks
        positions = book.positions
        broker = self.broker
        broker_on_trade = self._broker_on_trade
        executions = broker.executions
        model = self.model
        safe = self.risk.safe_marks
        kinds = _KINDS
        awaiting = self._awaiting_open
        with self._lock:
            clock = self.clock
            next_minute = self._next_minute_ns
            counted = 0
            try:
                for ev in events:
                    ts = ev.ts
                    if ts >= stop_at:
                        stats.after_stop += 1
                        self.request_stop("close")
                        continue
                    if ts > clock:
                        self.clock = clock = ts
                        if ts >= next_minute:
                            self._close_minute(ts)
                            next_minute = self._next_minute_ns
                    counted += 1
                    symbol = ev.symbol
                    if awaiting and symbol in awaiting and ts >= self._open_ns:
                        self._saw_open(ev)
                    kind = kinds[type(ev)]
                    if kind == "t":
                        price = ev.price
                        pos = positions.get(symbol)
                        if marks.get(symbol) != price:
                            marks[symbol] = price
                            # only a held price moves net P&L, and within its safe range
                            # it cannot trip the kill switch
                            if pos is not None and pos.qty:
                                band = safe.get(symbol)
                                if band is None or not band[0] <= price <= band[1]:
                                    self._net_moved = True
                        if broker_on_trade is not None:
                            broker_on_trade(ev)
                        if executions or self._net_moved:
                            self._drain()
                            pos = positions.get(symbol)
                        if self.halt_pending:
                            continue  # the kill switch tripped: no more model orders today
                        orders = model.on_trade(ev, pos.qty if pos is not None else 0)
                    elif kind == "q":
                        broker.on_quote(ev)
                        if executions or self._net_moved:
                            self._drain()
                        if self.halt_pending:
                            continue
                        price = (ev.bid_price + ev.ask_price) / 2
                        pos = positions.get(symbol)
                        orders = model.on_quote(ev, pos.qty if pos is not None else 0)
                    else:
                        price = ev.close
                        pos = positions.get(symbol)
                        if marks.get(symbol) != price:
                            marks[symbol] = price
                            if pos is not None and pos.qty:
                                band = safe.get(symbol)
                                if band is None or not band[0] <= price <= band[1]:
                                    self._net_moved = True
                        broker.on_bar(ev)
                        if executions or self._net_moved:
                            self._drain()
                            pos = positions.get(symbol)
                        if self.halt_pending:
                            continue
                        orders = model.on_bar(ev, pos.qty if pos is not None else 0)
                    if orders:
                        self._route(orders, price)
                        self._drain()
            except Exception as exc:
                raise EventError(
                    f"{type(exc).__name__}: {exc}, handling {ev!r} (model {self.model_name})"
                ) from exc
            finally:
                stats.events += counted

    def watch_open(self, symbols: Sequence[str], open_ns: int) -> None:
        """Record the official open of ``symbols`` (carried in) in :attr:`opens`."""
        self._awaiting_open.update(symbols)
        self._open_ns = open_ns

    def _saw_open(self, ev: Trade | Quote | Bar) -> None:
        if isinstance(ev, Trade):
            self.opens[ev.symbol] = ev.price
        elif isinstance(ev, Bar):
            self.opens[ev.symbol] = ev.open
        else:
            return  # a quote is no print
        self._awaiting_open.discard(ev.symbol)

    def start(self, window: SessionWindow, at_ns: int) -> None:
        """The session begins at tick time ``at_ns``: the model's ``on_start``, then what
        its ``before_open`` returns, sent at once (the open's auction orders)."""
        with self._lock:
            self.clock = max(self.clock, at_ns)
            self.model.on_start(window)
            if not overrides(self.model, "before_open"):
                return
            for intent in self.model.before_open(window, self.book.open_positions()):
                self._route((intent,), self.book.marks.get(intent.symbol, 0.0))
            self._drain()

    def _close_minute(self, ts: int) -> None:
        """The first event of a new tick-time minute: buffer the marks the last one ended on.

        Detected on tick time, not at the once-a-second flush, because a replay runs many
        minutes per second; it costs one comparison per event. The caller holds the lock.
        """
        if self._next_minute_ns:
            self._record_marks(self._next_minute_ns - MINUTE_NS)
        self._next_minute_ns = ts - ts % MINUTE_NS + MINUTE_NS

    def _record_marks(self, minute_ns: int) -> None:
        if minute_ns <= self._marked_ns:
            return
        self._marked_ns = minute_ns
        for symbol, price in self.book.marks.items():
            self._marks.append(MarkRecord(self.run_id, symbol, minute_ns, price))

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    # -- orders ---------------------------------------------------------------------------

    def _route(self, intents: Sequence[Intent], price: float) -> None:
        for order in intents:
            if isinstance(order, Cancel):
                self._cancel(order)
                continue
            reason = self.risk.check(order, price, self.clock)
            if reason is not None:
                self.stats.risk_rejections += 1
                self._risk_events.append(
                    RiskEventRecord(
                        self.run_id,
                        self.model_name,
                        self.clock,
                        order.symbol,
                        order.side.value,
                        order.qty,
                        reason,
                    )
                )
                if self._on_reject is not None and not self._in_reject:
                    self._hook(self._on_reject, order, reason)
                continue
            coid = self._send(order, purpose="model")
            if self._on_fill is not None or self._on_reject is not None:
                self._intents[coid] = order
                if self._in_reject:
                    self._retries.add(coid)
            if order.limit_price is not None or order.tif in _AUCTIONS:
                self._may_not_fill.add(coid)

    def _cancel(self, cancel: Cancel) -> None:
        """Ask the broker to cancel the model's working orders that ``cancel`` names."""
        self._cancel_working(
            lambda row: (
                row.symbol == cancel.symbol and (cancel.tag is None or row.tag == cancel.tag)
            )
        )

    def _cancel_working(self, which: Callable[[OrderRecord], bool] = lambda row: True) -> None:
        """Cancel the model's working orders (those ``which`` picks); caller holds the lock."""
        chosen = [
            coid
            for coid, row in self._open.items()
            if row.purpose == "model" and row.status.is_open and which(row)
        ]
        for coid in chosen:
            self.broker.cancel_order(coid, self.clock)

    def _cancel_may_not_fill(self) -> None:
        self._cancel_working(lambda row: row.client_order_id in self._may_not_fill)

    def cancel_working(self) -> None:
        """Cancel the model's working limit and auction orders, before a flatten: it
        offsets positions, not orders that may never fill (a resting limit, a ``cls``).

        Market orders still in flight are left to fill: the flatten offsets them."""
        with self._lock:
            self._closing = True
            self._cancel_may_not_fill()

    def _hook(self, hook: Callable[..., Sequence[Intent]], *args: Any) -> None:
        """Call ``on_fill``/``on_reject`` and route what it returns.

        Not once the session is stopping or the kill switch has tripped. What ``on_reject``
        returns goes through the risk gate like any order, but its own refusal (by the gate
        or the broker) is recorded and not reported back, so a model that resubmits on
        every refusal cannot loop.
        """
        if self._closing or self.halt_pending or self.stop_requested.is_set():
            return
        outer = self._in_reject
        self._in_reject = hook == self._on_reject
        try:
            intents = hook(*args)
            if intents:
                symbol = args[0].symbol
                self._route(intents, self.book.marks.get(symbol, 0.0))
        finally:
            self._in_reject = outer

    def _send(self, order: Order, purpose: str) -> str:
        self._seq += 1
        coid = f"{order_prefix(self.run_id)}{self._seq}"
        # a model may have given the plain string; the enum's call costs a microsecond
        tif = order.tif if order.tif.__class__ is TimeInForce else TimeInForce(order.tif)
        row = OrderRecord(
            coid,
            self.run_id,
            self.model_name,
            order.symbol,
            order.side,
            order.qty,
            self.clock,
            limit_price=order.limit_price,
            purpose=purpose,
            tag=order.tag,
            tif=tif,
        )
        self._open[coid] = row
        self._new_orders.append(row)
        self.stats.orders += 1
        self.risk.order_sent(order)
        self.broker.submit(
            BrokerOrder(
                coid,
                order.symbol,
                order.side,
                order.qty,
                self.clock,
                order.limit_price,
                tif,
            )
        )
        return coid

    def _drain(self) -> None:
        """Apply what the broker reported since the last call."""
        executions = self.broker.executions
        while executions:
            self._apply(executions.popleft())
            self._net_moved = True
        if self._net_moved:
            self._net_moved = False
            if self.risk.check_loss():
                self._kill_switch()

    def _kill_switch(self) -> None:
        """Max daily loss reached: record it, flatten at once on tick time, stop for the day.

        Flattening here, at the event that tripped it, rather than when the session's main
        thread notices, makes the exit price the next tick's, identical in every replay.
        """
        reason = self.risk.halted_reason or "max_daily_loss"
        self.halt_pending = True
        self._risk_events.append(
            RiskEventRecord(
                self.run_id, self.model_name, self.clock, "", "", 0, f"kill switch: {reason}"
            )
        )
        self._flatten_locked("kill switch")
        self.request_stop(f"kill switch: {reason}")

    def _apply(self, ex: Execution) -> None:
        row = self._open.get(ex.client_order_id)
        if row is None:
            return  # not ours (another session on the same account) or already closed
        sign = 1 if ex.side is Side.BUY else -1
        if ex.kind in (ExecType.FILL, ExecType.PARTIAL_FILL):
            self.book.apply_fill(ex.symbol, sign * ex.qty, ex.price, ex.fee)
            row.add_fill(ex.qty, ex.price)
            self.risk.order_done(ex.symbol, sign * ex.qty)
            self.stats.fills += 1
            self._fills.append(
                FillRecord(
                    self.run_id,
                    self.model_name,
                    ex.client_order_id,
                    ex.symbol,
                    ex.side,
                    ex.qty,
                    ex.price,
                    ex.fee,
                    self.clock if self.fills_on_tick_time else ex.ts,
                )
            )
        elif ex.kind in (ExecType.REJECTED, ExecType.CANCELED):
            self.risk.order_done(ex.symbol, sign * (row.qty - row.filled_qty))
            row.status = OrderStatus(ex.kind.value)
            row.reason = ex.reason[:500]
            if ex.kind is ExecType.REJECTED:
                self.stats.rejections += 1
        elif ex.kind is ExecType.ACCEPTED:
            row.status = OrderStatus.ACCEPTED
        self._dirty.add(ex.client_order_id)
        if self._intents:
            self._tell_model(ex, row)

    def _tell_model(self, ex: Execution, row: OrderRecord) -> None:
        """The v2 hooks for one execution of the model's own order (caller holds the lock)."""
        coid = ex.client_order_id
        order = self._intents.get(coid)
        if order is None:
            return
        retry = coid in self._retries
        if not row.status.is_open:
            del self._intents[coid]
            self._retries.discard(coid)
        if ex.kind in (ExecType.FILL, ExecType.PARTIAL_FILL) and self._on_fill is not None:
            ts = self.clock if self.fills_on_tick_time else ex.ts
            fill = Fill(order, ex.qty, ex.price, ts, row.qty - row.filled_qty)
            self._hook(self._on_fill, fill, self.book.qty(ex.symbol))
        elif ex.kind is ExecType.REJECTED and self._on_reject is not None and not retry:
            self._hook(self._on_reject, order, ex.reason)

    # -- main thread ----------------------------------------------------------------------

    def flatten(self, hold: int = 0) -> dict[str, int]:
        """Send offsetting orders for the session's open positions; return them.

        Computed from the session's own book, never the broker's account view, so a
        session sharing an account closes only what it opened. ``hold`` is what may stay
        open per symbol (a model's overnight allowance at a normal end; 0 otherwise).
        """
        with self._lock:
            self._closing = True
            self._drain()
            return self._flatten_locked("flatten", hold)

    def _flatten_locked(self, tag: str, hold: int = 0) -> dict[str, int]:
        """Offset the book plus what is still in flight, per symbol, down to ``hold``
        (caller holds the lock).

        Working limit and auction orders are canceled first; a simulator's cancels land at
        once, a real broker's before the session's settle (see :meth:`cancel_working`).
        """
        self._cancel_may_not_fill()
        self._drain()
        sent: dict[str, int] = {}
        pending = self.risk.pending
        symbols = set(self.book.open_positions()) | {s for s, q in pending.items() if q}
        for symbol in sorted(symbols):
            remaining = self.book.qty(symbol) + pending.get(symbol, 0)
            excess = remaining - max(-hold, min(hold, remaining))
            if excess == 0:
                continue
            side = Side.SELL if excess > 0 else Side.BUY
            self._send(Order(symbol, side, abs(excess), tag=tag), purpose="flatten")
            sent[symbol] = -excess
        self._drain()
        return sent

    def drain(self) -> None:
        with self._lock:
            self._drain()

    def take_batch(self, *, positions: bool = False) -> Batch:
        """Everything to write since the last call; terminal orders leave memory once taken.

        ``positions=True`` is the session's final flush: it also closes the current
        minute's marks, so the last equity row includes the flatten.
        """
        with self._lock:
            if positions and self._next_minute_ns:
                self._record_marks(self._next_minute_ns - MINUTE_NS)
            batch = Batch()
            new_ids = set()
            while self._new_orders:
                row = self._new_orders.popleft()
                new_ids.add(row.client_order_id)
                batch.new_orders.append(copy.copy(row))  # the engine goes on changing its own
            for coid in self._dirty:
                row = self._open.get(coid)
                if row is not None and coid not in new_ids:
                    batch.order_updates.append(row.update())
            for coid in self._dirty | new_ids:
                row = self._open.get(coid)
                if row is not None and not row.status.is_open:
                    del self._open[coid]
                    self._may_not_fill.discard(coid)
            self._dirty.clear()
            while self._fills:
                batch.fills.append(self._fills.popleft())
            while self._risk_events:
                batch.risk_events.append(self._risk_events.popleft())
            while self._marks:
                batch.marks.append(self._marks.popleft())
            if positions or batch.fills:
                batch.positions = [
                    PositionRecord(
                        self.run_id,
                        s,
                        self.model_name,
                        p.qty,
                        p.avg_price,
                        self.book.marks.get(s, p.avg_price),
                        p.realized,
                        p.fees,
                        self.clock,
                    )
                    for s, p in self.book.positions.items()
                ]
            return batch

    def open_orders(self) -> int:
        with self._lock:
            return sum(1 for r in self._open.values() if r.status.is_open)
