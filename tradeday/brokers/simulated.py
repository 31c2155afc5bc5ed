"""The default broker: fills on tick time, deterministic, no network.

Rules (all on tick time, so a replay gives the same fills every time):

- **Latency.** A ``day`` or ``ioc`` order sent at tick time ``t`` gets its first chance at the first market
  event of its symbol at or after ``t + latency`` that comes *after* it was sent: the
  event that made the model decide is already in the past.
- **Market orders** (``day``) fill at the first price after the decision: the quote when
  the symbol has one (buy at the ask, sell at the bid), else the trade price, else (bars
  only) the bar's open.
- **Limit orders** fill at that same price if it is at or better than the limit on their
  first chance. Otherwise they rest, and fill *at the limit* on a later event that trades
  at or through it: a trade at or through the limit, a bar whose low (buy) or high (sell)
  reaches it, a quote whose other side reaches it.
- **Partial fills.** With ``max_participation`` set, an order takes at most that share of
  each event's size (trade size, bar volume, the quote's size on the side it takes); the
  fraction left over carries to the next event (10% of 1-lot prints: one share every ten
  prints), and each part is a PARTIAL_FILL until the last, a FILL. Unset: orders fill whole.
- **Time in force.** ``day`` works until the data ends; ``ioc`` gets its first chance only
  and what it does not fill then is CANCELED; ``opg`` fills at the official open, the
  first trade (or the open of the first bar) at or after the session's open; ``cls`` at
  the official close, the last regular-hours trade (or the close of the last bar that ends
  by the close), once an event at or after the close (or that last bar) shows it is the
  last. Which session's auction, and when an auction order is refused, follows Alpaca
  (:mod:`tradeday.auctions`): early closes and holidays come from the exchange calendar.
  Auction fills are whole, at the auction price, without slippage; a limit that the
  auction price does not reach is CANCELED.
- **flush** (no more data: the session is ending) fills what is left of continuous orders
  at the last known quote or trade price (a limit only if that price reaches it), so the
  session's own flatten completes; a ``cls`` order fills if the clock has reached the
  close, and every other auction order is CANCELED with the reason.
- **Slippage** moves continuous fills against the order by ``slippage_bps``, never past a
  limit; **commission** is per share, on every fill.
- **Cash and buying power**, a 1x cash account: buying power is cash minus twice the value
  of short positions (a short's proceeds are held, plus its value again as collateral),
  with every position and the unfilled part of every working order valued at the current
  price as if filled. An order that would leave buying power negative, and lower than
  before, is REJECTED with the amounts; orders that reduce exposure are always accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from tradeday.auctions import AuctionRefused, auction_session
from tradeday.brokers.base import Broker, BrokerOrder, ExecType, Execution
from tradeday.events import (
    MINUTE_NS,
    NS_PER_MS,
    Bar,
    Quote,
    SessionWindow,
    Side,
    TimeInForce,
    Trade,
)

if TYPE_CHECKING:
    from tradeday.config import BrokerConfig

_AUCTIONS = (TimeInForce.OPG, TimeInForce.CLS)


@dataclass(slots=True)
class _Working:
    """An accepted order that has not ended, and what the simulator knows of it."""

    order: BrokerOrder
    filled: int = 0
    credit: Fraction = Fraction(0)  # participation left over from earlier events
    resting: bool = False  # a limit that was not marketable on its first chance
    session: SessionWindow | None = None  # opg/cls: whose auction
    close_price: float | None = None  # cls: the last regular-hours price so far

    @property
    def remaining(self) -> int:
        return self.order.qty - self.filled

    @property
    def buys(self) -> bool:
        return self.order.side is Side.BUY


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
        max_participation: float | None = None,
    ) -> None:
        super().__init__()
        self.cash = starting_cash
        self.latency_ns = int(latency_ms * NS_PER_MS)
        self.slippage = slippage_bps / 10_000
        self.commission = commission_per_share
        # exact arithmetic, so 10 prints at 10% add up to one whole share
        self.participation = None if max_participation is None else Fraction(str(max_participation))
        self._positions: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._quotes: dict[str, tuple[float, float, int, int]] = {}
        self._pending: list[_Working] = []  # day and ioc orders
        self._auctions: list[_Working] = []  # opg and cls orders
        self._orders: dict[str, Execution] = {}

    @classmethod
    def from_config(cls, config: BrokerConfig) -> SimulatedBroker:
        """The simulator a session's ``broker`` parameter describes."""
        return cls(
            config.starting_cash,
            config.latency_ms,
            config.slippage_bps,
            config.commission_per_share,
            config.max_participation,
        )

    # -- orders -----------------------------------------------------------------------

    def submit(self, order: BrokerOrder) -> None:
        if order.client_order_id in self._orders:
            return  # a resubmit: the first one stands
        working = _Working(order)
        refusal = self._shortfall(order)
        if refusal is None and order.tif in _AUCTIONS:
            try:
                working.session = auction_session(order.tif, order.ts)
            except AuctionRefused as err:
                refusal = str(err)
        if refusal is not None:
            self._end(working, ExecType.REJECTED, order.ts, refusal)
            return
        self._record(working, ExecType.ACCEPTED, order.ts)
        if working.session is not None:
            working.close_price = self._regular_last(working, order.symbol)
            self._auctions.append(working)
            return
        quote = self._quotes.get(order.symbol) if self.latency_ns == 0 else None
        if quote is not None:
            bid, ask, bid_size, ask_size = quote
            if self._chance(working, order.ts, None, ask, bid, ask_size, bid_size):
                return  # a standing quote: its first chance is now
        self._pending.append(working)

    def cancel_order(self, client_order_id: str, now: int) -> None:
        for working in (*self._pending, *self._auctions):
            if working.order.client_order_id == client_order_id:
                self._pending = [w for w in self._pending if w is not working]
                self._auctions = [w for w in self._auctions if w is not working]
                self._end(working, ExecType.CANCELED, now, "canceled on request")
                return

    # -- market data ------------------------------------------------------------------

    def on_trade(self, trade: Trade) -> None:
        if self._pending:
            price, size = trade.price, trade.size
            self._continuous(trade.symbol, trade.ts, price, price, price, size, size)
        if self._auctions:
            self._auction(trade.symbol, trade.ts, trade.price, trade.price, trade.ts)
        self._last[trade.symbol] = trade.price

    def on_quote(self, quote: Quote) -> None:
        if quote.bid_price > 0 and quote.ask_price > 0:
            self._quotes[quote.symbol] = (
                quote.bid_price,
                quote.ask_price,
                quote.bid_size,
                quote.ask_size,
            )
            if self._pending:
                self._continuous(
                    quote.symbol,
                    quote.ts,
                    None,
                    quote.ask_price,
                    quote.bid_price,
                    quote.ask_size,
                    quote.bid_size,
                )
        if self._auctions:
            self._auction(quote.symbol, quote.ts, None, None, quote.ts)

    def on_bar(self, bar: Bar) -> None:
        if self._pending:
            volume = bar.volume
            self._continuous(bar.symbol, bar.ts, bar.open, bar.low, bar.high, volume, volume)
        if self._auctions:
            self._auction(bar.symbol, bar.ts, bar.open, bar.close, bar.ts + MINUTE_NS)
        self._last[bar.symbol] = bar.close

    def set_mark(self, symbol: str, price: float) -> None:
        self._last.setdefault(symbol, price)

    def carry(self, symbol: str, qty: int, cost: float) -> None:
        self._positions[symbol] = self._positions.get(symbol, 0) + qty
        self.cash -= qty * cost

    def flush(self, now: int) -> None:
        """No more market data is coming: settle every working order (module docstring)."""
        for working in self._pending:
            order = working.order
            price = self._price(order, None)
            if price is None:
                self._end(working, ExecType.CANCELED, now, "no price to fill at")
            elif working.resting or not self._within_limit(order, price):
                self._end(working, ExecType.CANCELED, now, "limit not reached")
            else:
                self._fill(working, now, working.remaining, price)
        self._pending = []
        for working in self._auctions:
            session = working.session
            assert session is not None
            if working.order.tif is TimeInForce.CLS and now >= session.close_ns:
                self._close_auction(working)
            else:
                what = "open" if working.order.tif is TimeInForce.OPG else "close"
                self._end(
                    working,
                    ExecType.CANCELED,
                    now,
                    f"{working.order.tif.value}: the data ended before the {what} of {session.day}",
                )
        self._auctions = []

    # -- continuous orders (day, ioc) -------------------------------------------------

    def _continuous(
        self,
        symbol: str,
        now: int,
        traded: float | None,
        buy_reach: float,
        sell_reach: float,
        buy_size: int,
        sell_size: int,
    ) -> None:
        """One event of ``symbol`` for the day/ioc orders that are due.

        ``traded`` is the event's first traded price (None for a quote); ``*_reach`` the
        best price it offers a resting buy or sell; ``*_size`` what it can fill of one.
        """
        still = []
        for working in self._pending:
            order = working.order
            if (
                order.symbol != symbol
                or order.ts + self.latency_ns > now
                or not self._chance(
                    working, now, traded, buy_reach, sell_reach, buy_size, sell_size
                )
            ):
                still.append(working)
        self._pending = still

    def _chance(
        self,
        working: _Working,
        now: int,
        traded: float | None,
        buy_reach: float,
        sell_reach: float,
        buy_size: int,
        sell_size: int,
    ) -> bool:
        """Fill what this event allows; True when the order has ended."""
        order = working.order
        ioc = order.tif is TimeInForce.IOC
        price: float | None = None
        if not working.resting:
            price = self._price(order, traded)
            if price is None:
                return False
            if not self._within_limit(order, price):
                if ioc:
                    self._end(working, ExecType.CANCELED, now, "ioc: limit not reached")
                    return True
                working.resting = True
                price = None
        if price is None:  # resting at the limit: fills there if the event reaches it
            limit = order.limit_price
            assert limit is not None
            reach = buy_reach if working.buys else sell_reach
            if reach > limit if working.buys else reach < limit:
                return False
            price = limit
        qty = self._allowed(working, buy_size if working.buys else sell_size)
        if qty:
            self._fill(working, now, qty, price)
        if working.remaining and ioc:
            self._end(working, ExecType.CANCELED, now, "ioc: unfilled remainder canceled")
            return True
        return not working.remaining

    def _allowed(self, working: _Working, size: int) -> int:
        """How much of ``working`` an event of ``size`` may fill under the participation cap."""
        if self.participation is None:
            return working.remaining
        working.credit += self.participation * size
        qty = min(working.remaining, int(working.credit))
        working.credit -= qty
        return qty

    def _within_limit(self, order: BrokerOrder, price: float) -> bool:
        limit = order.limit_price
        return limit is None or (price <= limit if order.side is Side.BUY else price >= limit)

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

    # -- auction orders (opg, cls) ----------------------------------------------------

    def _auction(
        self, symbol: str, now: int, first: float | None, last: float | None, ends: int
    ) -> None:
        """One event of ``symbol`` (``first``/``last`` traded price, None for a quote; it
        covers the time up to ``ends``) for the opg and cls orders."""
        still = []
        for working in self._auctions:
            session = working.session
            assert session is not None
            if working.order.symbol != symbol or now < session.open_ns:
                still.append(working)
            elif working.order.tif is TimeInForce.OPG:
                if now >= session.close_ns:
                    reason = f"opg: no print in the session of {session.day}"
                    self._end(working, ExecType.CANCELED, now, reason)
                elif first is None:
                    still.append(working)  # a quote is not the opening print
                else:
                    self._auction_fill(working, now, first)
            elif now >= session.close_ns:
                self._close_auction(working)
            else:
                if last is not None:
                    working.close_price = last
                if ends >= session.close_ns and last is not None:
                    self._close_auction(working)  # the bar that ends at the close
                else:
                    still.append(working)
        self._auctions = still

    def _close_auction(self, working: _Working) -> None:
        session = working.session
        assert session is not None
        if working.close_price is None:
            reason = f"cls: no regular-hours print of {working.order.symbol} on {session.day}"
            self._end(working, ExecType.CANCELED, session.close_ns, reason)
        else:
            self._auction_fill(working, session.close_ns, working.close_price)

    def _auction_fill(self, working: _Working, now: int, price: float) -> None:
        if self._within_limit(working.order, price):
            self._fill(working, now, working.remaining, price)
        else:
            reason = f"{working.order.tif.value}: limit not reached at the auction price {price}"
            self._end(working, ExecType.CANCELED, now, reason)

    def _regular_last(self, working: _Working, symbol: str) -> float | None:
        """A cls order's close price until a later print: the last one, if it was in regular hours."""
        session = working.session
        assert session is not None
        return self._last.get(symbol) if working.order.ts >= session.open_ns else None

    # -- bookkeeping ------------------------------------------------------------------

    def _fill(self, working: _Working, now: int, qty: int, price: float) -> None:
        order = working.order
        signed = qty if order.side is Side.BUY else -qty
        fee = self.commission * qty
        self.cash -= signed * price + fee
        self._positions[order.symbol] = self._positions.get(order.symbol, 0) + signed
        working.filled += qty
        kind = ExecType.FILL if not working.remaining else ExecType.PARTIAL_FILL
        self._record(working, kind, now, qty=qty, price=price, fee=fee)

    def _end(self, working: _Working, kind: ExecType, now: int, reason: str) -> None:
        self._record(working, kind, now, reason=reason)

    def _record(
        self,
        working: _Working,
        kind: ExecType,
        now: int,
        *,
        qty: int = 0,
        price: float = 0.0,
        fee: float = 0.0,
        reason: str = "",
    ) -> None:
        order = working.order
        execution = Execution(
            order.client_order_id,
            kind,
            now,
            order.symbol,
            order.side,
            qty=qty,
            price=price,
            fee=fee,
            reason=reason,
        )
        self._orders[order.client_order_id] = execution
        self.executions.append(execution)

    def buying_power(self, extra: BrokerOrder | None = None) -> float | None:
        """Cash minus twice the shorts' value, with working orders (and ``extra``) as if filled.

        ``None`` when a price needed to value it is unknown.
        """
        held = dict(self._positions)
        cash = self.cash
        working = [(w.order, w.remaining) for w in (*self._pending, *self._auctions)]
        if extra is not None:
            working.append((extra, extra.qty))
        for order, qty in working:
            price = self._price(order, None)
            if price is None:
                return None
            signed = qty if order.side is Side.BUY else -qty
            held[order.symbol] = held.get(order.symbol, 0) + signed
            cash -= signed * price + self.commission * qty
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

    def positions(self) -> dict[str, int]:
        return {s: q for s, q in self._positions.items() if q}

    def find_order(self, client_order_id: str) -> Execution | None:
        return self._orders.get(client_order_id)
