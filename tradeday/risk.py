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
_INF = float("inf")
_ROUNDING_MARGIN = 1e-9
"""Of the P&L's scale, kept back from the headroom: float sums err by ~1e-16 of it."""


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
        # held symbol -> (lowest, highest) mark at which a loss check cannot trip; none: check
        self.safe_marks: dict[str, tuple[float, float]] = {}

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
        """Trip the kill switch when the day's net loss passes the limit; True when it trips now.

        When it does not trip, :attr:`safe_marks` is set for the marks of now.
        """
        if self.halted_reason is not None:
            return False
        net = self.book.net()
        if net < -self.limits.max_daily_loss:
            self.halted_reason = (
                f"max_daily_loss: net {net:,.2f} is below -{self.limits.max_daily_loss:,.2f}"
            )
            self.counts["max_daily_loss"] = 1
            return True
        self._set_safe_marks(net)
        return False

    def _set_safe_marks(self, net: float) -> None:
        """Per held symbol, the range its mark may move in without the loss check tripping.

        Each held symbol may lose an equal share of the headroom left (less a margin far
        above float rounding), so while every mark stays in its range no check could trip,
        and the engine skips it (a check per held-price move was a third of its per-trade
        cost). Valid until the next fill, after which the engine checks again anyway.
        """
        limit = self.limits.max_daily_loss
        book = self.book
        held = [
            (s, p.qty, book.marks.get(s, p.avg_price)) for s, p in book.positions.items() if p.qty
        ]
        scale = limit + abs(net) + sum(abs(qty * mark) for _, qty, mark in held)
        share = (net + limit - scale * _ROUNDING_MARGIN) / max(len(held), 1)
        self.safe_marks.clear()
        if share > 0:
            for symbol, qty, mark in held:
                floor_or_ceiling = mark - share / qty
                self.safe_marks[symbol] = (
                    (floor_or_ceiling, _INF) if qty > 0 else (-_INF, floor_or_ceiling)
                )
