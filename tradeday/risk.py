"""The risk gate between a model and its broker.

Every order a model returns passes :meth:`RiskGate.check`; a refusal is a reason string
that starts with the name of the limit it crossed (a :class:`~tradeday.config.RiskLimits`
field), which the engine records as a risk event and :attr:`RiskGate.counts` counts. All
limits run on tick time, so a replay refuses exactly what the same day live would have.

Exposure counts orders still in flight as if filled: the book's position plus what is
pending, per symbol, valued at the last mark. An order that does not increase its
symbol's absolute exposure is never refused by the position, notional or capital limits,
so a model can always get out; after a ledger outage longer than
``max_ledger_outage_minutes`` only such orders pass. The kill switch (:meth:`RiskGate.check_loss`) halts the
gate for the rest of the day; the engine then flattens and stops.
"""

from __future__ import annotations

from collections import deque

from tradeday.book import Book
from tradeday.config import RiskLimits
from tradeday.events import MINUTE_NS, Order, TimeInForce

_TIME_IN_FORCE = tuple(TimeInForce)


class RiskGate:
    def __init__(self, limits: RiskLimits, book: Book) -> None:
        self.limits = limits
        self.book = book
        self.pending: dict[str, int] = {}
        self.halted_reason: str | None = None
        self.counts: dict[str, int] = {}
        # set by the session from its ledger writer: past the limit, nothing may open
        self.ledger_outage_s = 0.0
        self._recent: deque[int] = deque()

    def check(self, order: Order, price: float, ts: int) -> str | None:
        """``None`` to accept (and count the order for the rate limit), else why not."""
        reason = self._refusal(order, price, ts)
        if reason is None:
            self._recent.append(ts)
        else:
            limit = reason.split(":", 1)[0]
            self.counts[limit] = self.counts.get(limit, 0) + 1
        return reason

    def _refusal(self, order: Order, price: float, ts: int) -> str | None:
        lim = self.limits
        if self.halted_reason is not None:
            return f"halted: {self.halted_reason}"
        if order.qty <= 0:
            return f"invalid_qty: quantity {order.qty} is not positive"
        if order.tif not in _TIME_IN_FORCE:
            return (
                f"invalid_tif: time in force {order.tif!r} is not one of "
                f"{', '.join(_TIME_IN_FORCE)} (tradeday.events.TimeInForce)"
            )
        if order.limit_price is not None and not order.limit_price > 0:
            return f"invalid_limit_price: limit_price {order.limit_price} is not positive"
        if order.qty > lim.max_order_qty:
            return f"max_order_qty: quantity {order.qty} > {lim.max_order_qty}"
        recent = self._recent
        while recent and recent[0] <= ts - MINUTE_NS:
            recent.popleft()
        if len(recent) >= lim.max_orders_per_minute:
            return (
                f"max_orders_per_minute: {len(recent)} orders in the last minute "
                f"(limit {lim.max_orders_per_minute})"
            )
        symbol = order.symbol
        current = self.book.qty(symbol) + self.pending.get(symbol, 0)
        after = current + order.signed_qty
        if abs(after) <= abs(current):
            return None
        if self.ledger_outage_s > lim.max_ledger_outage_minutes * 60:
            return (
                f"max_ledger_outage_minutes: the ledger has refused writes for "
                f"{self.ledger_outage_s / 60:.1f} min: only orders that reduce a position"
            )
        if abs(after) > lim.max_position:
            return f"max_position: position {after} would exceed {lim.max_position}"
        gross = self._exposure_without(symbol) + abs(after) * price
        if gross > lim.max_gross_notional:
            return (
                f"max_gross_notional: gross {gross:,.2f} would exceed {lim.max_gross_notional:,.2f}"
            )
        budget = lim.capital + self.book.net()
        if gross > budget:
            return (
                f"capital: gross {gross:,.2f} would exceed allocated capital plus the day's "
                f"P&L ({budget:,.2f})"
            )
        return None

    def _exposure_without(self, symbol: str) -> float:
        """Gross exposure of every other symbol, in-flight orders included, at the marks."""
        marks = self.book.marks
        held = {s: p.qty for s, p in self.book.positions.items()}
        for s, q in self.pending.items():
            held[s] = held.get(s, 0) + q
        return sum(abs(q) * marks.get(s, 0.0) for s, q in held.items() if s != symbol)

    def order_sent(self, order: Order) -> None:
        self.pending[order.symbol] = self.pending.get(order.symbol, 0) + order.signed_qty

    def order_done(self, symbol: str, signed_unfilled: int) -> None:
        """An order filled, partly filled, or died: release ``signed_unfilled`` from pending."""
        self.pending[symbol] = self.pending.get(symbol, 0) - signed_unfilled

    def check_loss(self) -> bool:
        """Trip the kill switch when the day's net loss passes the limit; True when it trips now."""
        if self.halted_reason is None and self.book.net() < -self.limits.max_daily_loss:
            self.halted_reason = (
                f"max_daily_loss: net {self.book.net():,.2f} is below "
                f"-{self.limits.max_daily_loss:,.2f}"
            )
            self.counts["max_daily_loss"] = 1
            return True
        return False
