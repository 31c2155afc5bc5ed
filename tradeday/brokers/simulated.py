"""The default broker: fills on tick time, deterministic, no network.

Rules (all on tick time, so a replay gives the same fills every time):

- **Latency.** An order sent at tick time ``t`` can fill at the first market event at or
  after ``t + latency`` that comes *after* it was sent: the event that made the model
  decide is already in the past.
- **Price.** At the quote when the symbol has one (buy at the ask, sell at the bid), else
  at the trade price, else (bars only) at the bar's open: the first price after the
  decision. ``flush`` (no more data: the session is ending) fills what is left at the last
  known quote or trade price. A limit order fills only when that price is at or better than
  its limit.
- **Slippage** moves the price against the order by ``slippage_bps``; **commission** is
  per share.
- **Cash and buying power**, a 1x cash account: buying power is cash minus twice the value
  of short positions (a short's proceeds are held, plus its value again as collateral),
  with every position and order in flight valued at the current price as if filled. An
  order that would leave buying power negative, and lower than before, is REJECTED with
  the amounts; orders that reduce exposure are always accepted.
"""

from __future__ import annotations

from tradeday.brokers.base import Broker, BrokerOrder, ExecType, Execution
from tradeday.events import NS_PER_MS, Bar, Quote, Side, Trade


class SimulatedBroker(Broker):
    name = "simulated"
    tick_time = True
    needs_quotes = True  # fills at the bid or ask when the symbol has a quote

    def __init__(
        self,
        starting_cash: float = 1_000_000.0,
        latency_ms: float = 0.0,
        slippage_bps: float = 0.0,
        commission_per_share: float = 0.0,
    ) -> None:
        super().__init__()
        self.cash = starting_cash
        self.latency_ns = int(latency_ms * NS_PER_MS)
        self.slippage = slippage_bps / 10_000
        self.commission = commission_per_share
        self._positions: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._quotes: dict[str, tuple[float, float]] = {}
        self._pending: list[BrokerOrder] = []
        self._orders: dict[str, Execution] = {}

    def submit(self, order: BrokerOrder) -> None:
        if order.client_order_id in self._orders:
            return  # a resubmit: the first one stands
        shortfall = self._shortfall(order)
        if shortfall is not None:
            self._record(
                Execution(
                    order.client_order_id,
                    ExecType.REJECTED,
                    order.ts,
                    order.symbol,
                    order.side,
                    reason=shortfall,
                )
            )
            return
        self._record(
            Execution(order.client_order_id, ExecType.ACCEPTED, order.ts, order.symbol, order.side)
        )
        standing_quote = self.latency_ns == 0 and order.symbol in self._quotes
        if standing_quote and self._try_fill(order, order.ts, None):
            return
        self._pending.append(order)

    def on_trade(self, trade: Trade) -> None:
        if self._pending:
            self._fill_due(trade.symbol, trade.ts, trade.price)
        self._last[trade.symbol] = trade.price

    def on_quote(self, quote: Quote) -> None:
        if quote.bid_price > 0 and quote.ask_price > 0:
            self._quotes[quote.symbol] = (quote.bid_price, quote.ask_price)
        if self._pending:
            self._fill_due(quote.symbol, quote.ts, None)

    def on_bar(self, bar: Bar) -> None:
        if self._pending:
            self._fill_due(bar.symbol, bar.ts, bar.open)
        self._last[bar.symbol] = bar.close

    def set_mark(self, symbol: str, price: float) -> None:
        self._last.setdefault(symbol, price)

    def _fill_due(self, symbol: str, now: int, traded: float | None) -> None:
        still = []
        for order in self._pending:
            if (
                order.symbol != symbol
                or order.ts + self.latency_ns > now
                or not self._try_fill(order, now, traded)
            ):
                still.append(order)
        self._pending = still

    def flush(self, now: int) -> None:
        """No more market data is coming: fill what is pending at the last known prices."""
        for order in self._pending:
            if not self._try_fill(order, now, None):
                reason = "limit not reached" if self._price(order, None) else "no price to fill at"
                self._record(
                    Execution(
                        order.client_order_id,
                        ExecType.CANCELED,
                        now,
                        order.symbol,
                        order.side,
                        reason=reason,
                    )
                )
        self._pending = []

    def _price(self, order: BrokerOrder, traded: float | None) -> float | None:
        """Where ``order`` would fill now, slippage included: the quote, else this trade, else the last."""
        quote = self._quotes.get(order.symbol)
        if quote is not None:
            base: float | None = quote[1] if order.side is Side.BUY else quote[0]
        else:
            base = traded if traded is not None else self._last.get(order.symbol)
        if base is None:
            return None
        return base * (1 + self.slippage) if order.side is Side.BUY else base * (1 - self.slippage)

    def _try_fill(self, order: BrokerOrder, now: int, traded: float | None) -> bool:
        price = self._price(order, traded)
        if price is None:
            return False
        limit = order.limit_price
        if limit is not None and (price > limit if order.side is Side.BUY else price < limit):
            return False
        signed = order.qty if order.side is Side.BUY else -order.qty
        fee = self.commission * order.qty
        self.cash -= signed * price + fee
        self._positions[order.symbol] = self._positions.get(order.symbol, 0) + signed
        self._record(
            Execution(
                order.client_order_id,
                ExecType.FILL,
                now,
                order.symbol,
                order.side,
                qty=order.qty,
                price=price,
                fee=fee,
            )
        )
        return True

    def buying_power(self, extra: BrokerOrder | None = None) -> float | None:
        """Cash minus twice the shorts' value, with orders in flight (and ``extra``) as if filled.

        ``None`` when a price needed to value it is unknown.
        """
        held = dict(self._positions)
        cash = self.cash
        for order in [*self._pending, *([extra] if extra is not None else [])]:
            price = self._price(order, None)
            if price is None:
                return None
            signed = order.qty if order.side is Side.BUY else -order.qty
            held[order.symbol] = held.get(order.symbol, 0) + signed
            cash -= signed * price + self.commission * order.qty
        shorts = 0.0
        for symbol, qty in held.items():
            if qty < 0:
                mark = self._mark(symbol)
                if mark is None:
                    return None
                shorts -= qty * mark
        return cash - 2 * shorts

    def _mark(self, symbol: str) -> float | None:
        quote = self._quotes.get(symbol)
        return (quote[0] + quote[1]) / 2 if quote is not None else self._last.get(symbol)

    def _shortfall(self, order: BrokerOrder) -> str | None:
        """Why ``order`` exceeds buying power, or None when it fits (or cannot be valued)."""
        after = self.buying_power(order)
        if after is None or after >= 0:
            return None
        before = self.buying_power()
        if before is not None and after >= before:
            return None
        return (
            f"insufficient buying power: {order.side.value} {order.qty} {order.symbol} "
            f"needs {(before or 0.0) - after:,.2f}, buying power {before or 0.0:,.2f}"
        )

    def _record(self, execution: Execution) -> None:
        self._orders[execution.client_order_id] = execution
        self.executions.append(execution)

    def positions(self) -> dict[str, int]:
        return {s: q for s, q in self._positions.items() if q}

    def find_order(self, client_order_id: str) -> Execution | None:
        return self._orders.get(client_order_id)
