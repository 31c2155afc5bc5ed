"""The broker interface the engine drives.

A broker receives risk-approved orders with a deterministic ``client_order_id`` and
reports what happened to them as :class:`Execution` records, which the engine drains
from :attr:`Broker.executions`. The simulated broker produces them synchronously on tick
time; the Alpaca broker produces them from another thread (trade_updates or polling).
A ``deque`` is the hand-off because its ``append``/``popleft`` are thread-safe without a
lock on the hot path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from tradeday.events import Bar, Quote, Side, Trade


class ExecType(StrEnum):
    ACCEPTED = "accepted"
    FILL = "fill"
    PARTIAL_FILL = "partial_fill"
    REJECTED = "rejected"
    CANCELED = "canceled"


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as sent to a broker: the model's intent plus identity and time."""

    client_order_id: str
    symbol: str
    side: Side
    qty: int
    ts: int
    limit_price: float | None = None


@dataclass(frozen=True, slots=True)
class Execution:
    """One thing that happened to an order. ``qty``/``price`` are set for fills only."""

    client_order_id: str
    kind: ExecType
    ts: int
    symbol: str
    side: Side
    qty: int = 0
    price: float = 0.0
    fee: float = 0.0
    reason: str = ""
    broker_order_id: str = ""


class Broker(ABC):
    """A place to send orders. Implementations must be safe to call from one feed thread."""

    name: str = "broker"

    def __init__(self) -> None:
        self.executions: deque[Execution] = deque()

    @abstractmethod
    def submit(self, order: BrokerOrder) -> None:
        """Send an order; its fate arrives later in :attr:`executions`."""

    def on_trade(self, trade: Trade) -> None:  # noqa: B027 - optional market-data hook
        """Market data for brokers that simulate fills; real brokers ignore it."""

    def on_quote(self, quote: Quote) -> None:  # noqa: B027
        """Market data for brokers that simulate fills; real brokers ignore it."""

    def on_bar(self, bar: Bar) -> None:  # noqa: B027
        """Market data for brokers that simulate fills; real brokers ignore it."""

    def set_mark(self, symbol: str, price: float) -> None:  # noqa: B027
        """A reference price when no market data flows (recovery after a crash)."""

    def flush(self, now: int) -> None:  # noqa: B027
        """No more market data is coming: settle what a simulator still holds."""

    @abstractmethod
    def positions(self) -> dict[str, int]:
        """Signed quantity per symbol as the broker sees it (the whole account)."""

    @abstractmethod
    def find_order(self, client_order_id: str) -> Execution | None:
        """The latest known state of an order, to recognise a resubmit after a restart."""

    def close(self) -> None:  # noqa: B027
        """Release connections and threads."""
