"""The default broker: fills on tick time, deterministic, no network.

A market order becomes live ``latency`` after it was sent (tick time) and fills on the
first event at or after that: at the quote when the symbol has one (buy at the ask, sell
at the bid), otherwise at that trade's price; with zero latency it fills at once at the
current quote or the triggering trade's price. Slippage moves the price against the
order; commission is per share. Same inputs, same fills, every time.
"""

from __future__ import annotations

from tradeday.brokers.base import Broker, BrokerOrder, ExecType, Execution
from tradeday.events import Bar, Quote, Side, Trade


class SimulatedBroker(Broker):
    name = "simulated"

    def __init__(
        self,
        starting_cash: float = 1_000_000.0,
        latency_ms: float = 0.0,
        slippage_bps: float = 0.0,
        commission_per_share: float = 0.0,
    ) -> None:
        super().__init__()
        self.cash = starting_cash
        self.latency_ns = int(latency_ms * 1_000_000)
        self.slippage = slippage_bps / 10_000
        self.commission = commission_per_share
        self._positions: dict[str, int] = {}
        self._last_trade: dict[str, float] = {}
        self._quotes: dict[str, tuple[float, float]] = {}
        self._pending: list[BrokerOrder] = []
        self._orders: dict[str, Execution] = {}

    def submit(self, order: BrokerOrder) -> None:
        if order.client_order_id in self._orders:
            return  # a resubmit: the first one stands
        self._record(
            Execution(order.client_order_id, ExecType.ACCEPTED, order.ts, order.symbol, order.side)
        )
        if self.latency_ns == 0 and self._try_fill(order, order.ts):
            return
        self._pending.append(order)

    def on_trade(self, trade: Trade) -> None:
        self._last_trade[trade.symbol] = trade.price
        if self._pending:
            self._fill_due(trade.ts)

    def on_quote(self, quote: Quote) -> None:
        self._quotes[quote.symbol] = (quote.bid_price, quote.ask_price)
        if self._pending:
            self._fill_due(quote.ts)

    def on_bar(self, bar: Bar) -> None:
        self._last_trade[bar.symbol] = bar.close
        if self._pending:
            self._fill_due(bar.ts)

    def set_mark(self, symbol: str, price: float) -> None:
        self._last_trade.setdefault(symbol, price)

    def _fill_due(self, now: int) -> None:
        still = []
        for order in self._pending:
            if order.ts + self.latency_ns > now or not self._try_fill(order, now):
                still.append(order)
        self._pending = still

    def flush(self, now: int) -> None:
        """No more market data is coming: fill what is pending at the last known prices."""
        for order in self._pending:
            if not self._try_fill(order, now):
                self._record(
                    Execution(
                        order.client_order_id,
                        ExecType.CANCELED,
                        now,
                        order.symbol,
                        order.side,
                        reason="no price to fill at",
                    )
                )
        self._pending = []

    def _price(self, symbol: str, side: Side) -> float | None:
        quote = self._quotes.get(symbol)
        if quote is not None and quote[0] > 0 and quote[1] > 0:
            base = quote[1] if side is Side.BUY else quote[0]
        else:
            base = self._last_trade.get(symbol)
            if base is None:
                return None
        return base * (1 + self.slippage) if side is Side.BUY else base * (1 - self.slippage)

    def _try_fill(self, order: BrokerOrder, now: int) -> bool:
        price = self._price(order.symbol, order.side)
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

    def _record(self, execution: Execution) -> None:
        self._orders[execution.client_order_id] = execution
        self.executions.append(execution)

    def positions(self) -> dict[str, int]:
        return {s: q for s, q in self._positions.items() if q}

    def find_order(self, client_order_id: str) -> Execution | None:
        return self._orders.get(client_order_id)
