"""The broker interface the engine drives.

A broker receives risk-approved orders with a deterministic ``client_order_id`` and
reports what happened to them as :class:`Execution` records, which the engine drains
from :attr:`Broker.executions`. The simulated broker produces them synchronously on tick
time; the Alpaca broker produces them from another thread (trade_updates or polling).
A ``deque`` is the hand-off because its ``append``/``popleft`` are thread-safe without a
lock on the hot path.

What only some brokers can do is a Protocol here, checked with ``isinstance`` against the
capability, never against a broker class: :class:`OrderHistory` (orders that outlive the
process, for recovery and the end-of-session check) and :class:`AccountCloser` (close a
whole account, for sessions configured to own it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from tradeday.events import Bar, Quote, Side, TimeInForce, Trade


class BrokerError(RuntimeError):
    """A broker refused or could not be reached; brokers raise it (or a subclass) for that."""


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
    tif: TimeInForce = TimeInForce.DAY


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
    """A place to send orders. Implementations must be safe to call from one feed thread.

    Construction does no I/O: :meth:`start` connects (and checks the account), and
    :meth:`close` releases. ``tick_time`` brokers stamp executions with tick time (a
    simulator); the others with the wall clock. ``needs_quotes`` brokers price fills on
    quotes, so a session subscribes to them whatever its model uses.
    """

    name: str = "broker"
    tick_time: bool = False
    needs_quotes: bool = False

    def __init__(self) -> None:
        self.executions: deque[Execution] = deque()

    def start(self) -> None:  # noqa: B027 - only brokers with a connection have work here
        """Connect and check the account before the first order. Idempotent."""

    @abstractmethod
    def submit(self, order: BrokerOrder) -> None:
        """Send an order; its fate arrives later in :attr:`executions`."""

    @abstractmethod
    def cancel_order(self, client_order_id: str, now: int) -> None:
        """Cancel a working order (one that ended already is left alone).

        Its CANCELED execution, or its fills if it filled first, arrive in :attr:`executions`.
        """

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

    def carry(self, symbol: str, qty: int, cost: float) -> None:  # noqa: B027
        """A position an earlier session left held overnight for this one.

        A real broker's account holds it already; a simulator starts each session anew and
        is told, so selling it is not a short."""

    def market_open(self) -> bool:
        """Whether an order sent now can fill now; a simulator fills whenever it is fed.

        A real broker outside regular hours queues market orders for the next open, so a
        flatten then is neither flat nor failed (see :meth:`TradingSession.shutdown`)."""
        return True

    @abstractmethod
    def positions(self) -> dict[str, int]:
        """Signed quantity per symbol as the broker sees it (the whole account)."""

    @abstractmethod
    def find_order(self, client_order_id: str) -> Execution | None:
        """The latest known state of an order, to recognise a resubmit after a restart."""

    def close(self) -> None:  # noqa: B027
        """Release connections and threads."""


BROKER_TERMINAL = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})


@dataclass(frozen=True, slots=True)
class AccountOrder:
    """One order as a broker with history has it now: what recovery and shutdown read.

    ``status`` is the broker's own word (Alpaca's order status values).
    """

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: int
    filled_qty: int
    filled_avg_price: float
    status: str
    submitted_ns: int
    updated_ns: int

    @property
    def working(self) -> bool:
        return self.status not in BROKER_TERMINAL

    @property
    def signed_filled(self) -> int:
        return self.filled_qty if self.side is Side.BUY else -self.filled_qty


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What an account still held when a wait for it to be flat returned."""

    positions: dict[str, int]
    open_orders: tuple[str, ...]

    @property
    def flat(self) -> bool:
        return not self.positions and not self.open_orders


@runtime_checkable
class OrderHistory(Protocol):
    """A broker that remembers orders across processes (Alpaca does; a simulator cannot).

    Recovery reconciles a crashed run's ledger with it; a session's shutdown asks it what
    is left of the session's own orders rather than trusting its book.
    """

    def orders_of(self, prefix: str, since_ns: int) -> Sequence[AccountOrder]: ...

    def cancel(self, broker_order_id: str) -> None: ...


def left_at_broker(broker: OrderHistory, prefix: str, since_ns: int) -> str:
    """Ask the broker, not a book: the open orders and net filled position of the orders
    whose ``client_order_id`` starts with ``prefix`` (one run's); "" when nothing is left."""
    try:
        mine = broker.orders_of(prefix, since_ns=since_ns)
    except BrokerError as err:  # the caller is shutting down and must still record the run
        return f"unverified orders ({err})"
    net: dict[str, int] = {}
    for order in mine:
        net[order.symbol] = net.get(order.symbol, 0) + order.signed_filled
    working = sorted(o.client_order_id for o in mine if o.working)
    held = {s: q for s, q in net.items() if q}
    parts = [f"open orders {working}"] if working else []
    return ", ".join(parts + ([f"positions {held}"] if held else []))


@runtime_checkable
class AccountCloser(Protocol):
    """A broker that can close a whole account, for sessions configured to own it."""

    def close_all_positions(self) -> dict[str, int]: ...

    def wait_until_flat(
        self, symbols: Iterable[str] | None = None, timeout: float = 10.0
    ) -> Leftovers: ...
