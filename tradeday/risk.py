"""The risk gate between a model and its broker.

Every order a model returns passes :meth:`RiskGate.check`; a rejection is a reason
string that the engine records and counts. All limits run on tick time, so a replay
rejects exactly what the same day live would have.
"""

from __future__ import annotations

from collections import deque

from tradeday.book import Book
from tradeday.config import RiskLimits
from tradeday.events import NS_PER_S, Order

MINUTE_NS = 60 * NS_PER_S


class RiskGate:
    def __init__(self, limits: RiskLimits, book: Book) -> None:
        self.limits = limits
        self.book = book
        self.pending: dict[str, int] = {}
        self.halted_reason: str | None = None
        self._recent: deque[int] = deque()

    def check(self, order: Order, price: float, ts: int) -> str | None:
        """``None`` to accept, else why the order is refused."""
        lim = self.limits
        if self.halted_reason is not None:
            return f"trading halted: {self.halted_reason}"
        if order.qty <= 0:
            return f"quantity {order.qty} is not positive"
        if order.qty > lim.max_order_qty:
            return f"quantity {order.qty} > max_order_qty {lim.max_order_qty}"
        recent = self._recent
        while recent and recent[0] <= ts - MINUTE_NS:
            recent.popleft()
        if len(recent) >= lim.max_orders_per_minute:
            return f"more than max_orders_per_minute {lim.max_orders_per_minute}"
        symbol = order.symbol
        signed = order.signed_qty
        current = self.book.qty(symbol) + self.pending.get(symbol, 0)
        after = current + signed
        if abs(after) > lim.max_position and abs(after) > abs(current):
            return f"position {after} would exceed max_position {lim.max_position}"
        if abs(after) > abs(current):
            added = (abs(after) - abs(current)) * price
            gross = self.book.gross_exposure() + self._pending_notional() + added
            if gross > lim.max_gross_notional:
                return f"gross notional {gross:,.2f} would exceed max_gross_notional {lim.max_gross_notional:,.2f}"
            if gross > lim.capital:
                return f"notional {gross:,.2f} would exceed allocated capital {lim.capital:,.2f}"
        recent.append(ts)
        return None

    def _pending_notional(self) -> float:
        marks = self.book.marks
        return sum(abs(q) * marks.get(s, 0.0) for s, q in self.pending.items())

    def order_sent(self, order: Order) -> None:
        self.pending[order.symbol] = self.pending.get(order.symbol, 0) + order.signed_qty

    def order_done(self, symbol: str, signed_unfilled: int) -> None:
        """An order filled, partly filled, or died: release ``signed_unfilled`` from pending."""
        self.pending[symbol] = self.pending.get(symbol, 0) - signed_unfilled

    def check_loss(self) -> bool:
        """Trip the kill switch when the day's net loss passes the limit; True when it trips now."""
        if self.halted_reason is None and self.book.net() < -self.limits.max_daily_loss:
            self.halted_reason = f"max_daily_loss {self.limits.max_daily_loss:,.2f} reached"
            return True
        return False
