"""Market events and order records shared by feeds, models, risk, brokers and the ledger.

Market events are msgspec Structs, not pydantic: one is built per tick on the hot path,
where validation would cost more than the model itself. Their ``rename`` maps each field
to its Alpaca v2 stream key, so :mod:`tradeday.decode` builds them straight from a frame
in C. Timestamps are integer nanoseconds since the epoch, UTC: exact, cheap to compare,
and what both Alpaca and Parquet carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

import msgspec

# Time units, defined here once: every timestamp inside tradeday is integer nanoseconds.
NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
MINUTE_NS = 60 * NS_PER_S
DAY_NS = 86_400 * NS_PER_S
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_datetime(ts: int) -> datetime:
    """UTC datetime (microsecond precision) for a nanosecond timestamp."""
    return EPOCH + timedelta(microseconds=ts // NS_PER_US)


def datetime_to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch for a tz-aware datetime."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: give it a timezone (UTC inside tradeday)")
    delta = value - EPOCH
    return delta.days * DAY_NS + delta.seconds * NS_PER_S + delta.microseconds * NS_PER_US


class Trade(
    msgspec.Struct,
    gc=False,
    rename={
        "symbol": "S",
        "ts": "t",
        "price": "p",
        "size": "s",
        "exchange": "x",
        "conditions": "c",
    },
):
    """One print on the tape."""

    symbol: str
    ts: int
    price: float
    size: int
    exchange: str = ""
    conditions: tuple[str, ...] = ()

    @property
    def time(self) -> datetime:
        return ns_to_datetime(self.ts)

    def __repr__(self) -> str:
        return f"Trade({self.symbol} {self.time.isoformat()} {self.size}@{self.price})"


class Quote(
    msgspec.Struct,
    gc=False,
    rename={
        "symbol": "S",
        "ts": "t",
        "bid_price": "bp",
        "bid_size": "bs",
        "ask_price": "ap",
        "ask_size": "as",
    },
):
    """Top of book."""

    symbol: str
    ts: int
    bid_price: float
    bid_size: int
    ask_price: float
    ask_size: int

    @property
    def time(self) -> datetime:
        return ns_to_datetime(self.ts)

    def __repr__(self) -> str:
        return (
            f"Quote({self.symbol} {self.time.isoformat()} "
            f"{self.bid_size}x{self.bid_price} / {self.ask_size}x{self.ask_price})"
        )


class Bar(
    msgspec.Struct,
    gc=False,
    rename={
        "symbol": "S",
        "ts": "t",
        "open": "o",
        "high": "h",
        "low": "l",
        "close": "c",
        "volume": "v",
        "trade_count": "n",
        "vwap": "vw",
    },
):
    """An OHLCV bar; ``ts`` is the bar's start, as Alpaca labels minute bars."""

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    trade_count: int = 0
    vwap: float = 0.0

    @property
    def time(self) -> datetime:
        return ns_to_datetime(self.ts)

    def __repr__(self) -> str:
        return f"Bar({self.symbol} {self.time.isoformat()} o={self.open} c={self.close})"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class TimeInForce(StrEnum):
    """When an order may execute; the names and rules are Alpaca's (docs/models.md, "Orders").

    ``day``: during the session, the rest canceled at its end; ``ioc``: at once, the rest
    canceled; ``opg``: only in the opening auction; ``cls``: only in the closing auction.
    """

    DAY = "day"
    IOC = "ioc"
    OPG = "opg"
    CLS = "cls"


@dataclass(frozen=True, slots=True)
class Order:
    """What a model asks for. It never reaches a broker without passing the risk gate.

    A limit order is one with a ``limit_price``: :attr:`type` is derived from it, so the
    two can never disagree.
    """

    symbol: str
    side: Side
    qty: int
    limit_price: float | None = None
    tag: str = ""
    tif: TimeInForce = TimeInForce.DAY

    @property
    def type(self) -> OrderType:
        return OrderType.MARKET if self.limit_price is None else OrderType.LIMIT

    @property
    def signed_qty(self) -> int:
        return self.qty if self.side is Side.BUY else -self.qty


def buy(
    symbol: str,
    qty: int,
    tag: str = "",
    *,
    limit_price: float | None = None,
    tif: TimeInForce = TimeInForce.DAY,
) -> Order:
    return Order(symbol, Side.BUY, qty, limit_price, tag, tif)


def sell(
    symbol: str,
    qty: int,
    tag: str = "",
    *,
    limit_price: float | None = None,
    tif: TimeInForce = TimeInForce.DAY,
) -> Order:
    return Order(symbol, Side.SELL, qty, limit_price, tag, tif)


@dataclass(frozen=True, slots=True)
class Cancel:
    """What a model returns to cancel its own working orders in ``symbol``.

    Every working order of the model in that symbol, or only those tagged ``tag`` when it
    is given. Whatever filled before the broker took the cancel stays filled.
    """

    symbol: str
    tag: str | None = None


Intent = Order | Cancel
"""What a model's callbacks return: orders to send and cancels of its working orders."""


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of a model's own order, as ``Model.on_fill`` sees it."""

    order: Order  # the model's order, as it returned it (tag, limit, time in force)
    qty: int
    price: float
    ts: int
    remaining: int  # what of the order is still working: 0 once it is filled

    @property
    def symbol(self) -> str:
        return self.order.symbol

    @property
    def side(self) -> Side:
        return self.order.side


@dataclass(frozen=True, slots=True)
class SessionWindow:
    """One exchange session: the regular open and close, UTC nanoseconds."""

    day: date
    open_ns: int
    close_ns: int
    early_close: bool = False

    @property
    def open(self) -> datetime:
        return ns_to_datetime(self.open_ns)

    @property
    def close(self) -> datetime:
        return ns_to_datetime(self.close_ns)
