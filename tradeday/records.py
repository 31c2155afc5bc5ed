"""Typed ledger records: what the engine, recovery and the backtest buffer and the ledger stores.

They are msgspec Structs like the market events, not dicts or ORM objects: one is built
per order or fill on the hot path (cheaper than a dict, and a typo is an error), the
ledger converts them to and from its tables in bulk, and the journal encodes a whole
:class:`Batch` to JSON and back without a line of mapping code. They import nothing of
SQLAlchemy, so the engine stays free of storage.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from tradeday.events import Side, TimeInForce, ns_to_datetime


class OrderStatus(StrEnum):
    """An order's state in the ledger (equal to its string: ``OrderStatus.FILLED == "filled"``)."""

    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        """Still working at the broker: it may fill, so it counts as in flight."""
        return self in _OPEN


_OPEN = frozenset((OrderStatus.SUBMITTED, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED))


class OrderUpdate(msgspec.Struct, gc=False):
    """What changes on an order after it was recorded."""

    client_order_id: str
    status: OrderStatus
    filled_qty: int
    avg_fill_price: float
    reason: str = ""


class OrderRecord(msgspec.Struct, gc=False):
    """One order a run sent, keyed by its ``client_order_id`` (``<run_id>-<n>``)."""

    client_order_id: str
    run_id: str
    model: str
    symbol: str
    side: Side
    qty: int
    ts: int
    status: OrderStatus = OrderStatus.SUBMITTED
    limit_price: float | None = None
    filled_qty: int = 0
    avg_fill_price: float = 0.0
    reason: str = ""
    purpose: str = "model"  # model, flatten or recovery
    tag: str = ""
    tif: TimeInForce = TimeInForce.DAY

    @property
    def time(self) -> datetime:
        return ns_to_datetime(self.ts)

    def add_fill(self, qty: int, price: float) -> None:
        """The one place a fill averages into its order: volume-weighted price, then status."""
        filled = self.filled_qty + qty
        self.avg_fill_price = (self.avg_fill_price * self.filled_qty + price * qty) / filled
        self.filled_qty = filled
        self.status = OrderStatus.FILLED if filled >= self.qty else OrderStatus.PARTIALLY_FILLED

    def update(self) -> OrderUpdate:
        return OrderUpdate(
            self.client_order_id, self.status, self.filled_qty, self.avg_fill_price, self.reason
        )

    def apply(self, update: OrderUpdate) -> None:
        self.status = update.status
        self.filled_qty = update.filled_qty
        self.avg_fill_price = update.avg_fill_price
        self.reason = update.reason


class FillRecord(msgspec.Struct, gc=False):
    """One execution of an order: ``qty`` at ``price``."""

    run_id: str
    model: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    price: float
    fee: float
    ts: int

    @property
    def signed_qty(self) -> int:
        return self.qty if self.side is Side.BUY else -self.qty


class RiskEventRecord(msgspec.Struct, gc=False):
    """An order the risk gate refused, or the kill switch (``side`` empty, ``qty`` 0)."""

    run_id: str
    model: str
    ts: int
    symbol: str
    side: str
    qty: int
    reason: str


class PositionRecord(msgspec.Struct, gc=False):
    """A run's position in one symbol as of a flush: what recovery flattens after a crash."""

    run_id: str
    symbol: str
    model: str
    qty: int
    avg_price: float
    mark: float
    realized: float
    fees: float
    ts: int


class CarryStatus(StrEnum):
    """Where a position held overnight is: waiting for its model's next session, taken up by
    it, closed without it (``flatten-now --include-carried``), or its close sent while the
    market is closed and queued at the broker for the next open (not flat yet, and no
    session takes it up)."""

    OPEN = "open"
    TAKEN = "taken"
    CLOSED = "closed"
    QUEUED = "queued"


class CarriedRecord(msgspec.Struct):
    """A position a run ended holding for its model's next session on the same account.

    ``cost`` is the average cost it opens the next book at, ``mark`` the carrying session's
    last price (its close); ``open_price`` is the taking session's first price of the symbol
    at or after its open, so the night's P&L is ``qty * (open_price - mark)``. Written by the
    carrying run (or by the recovery of a crashed one) and updated by the run that takes it.
    """

    carry_id: str  # <from_run_id>/<symbol>
    model: str
    broker: str
    account: str
    symbol: str
    qty: int
    cost: float
    mark: float
    from_run_id: str
    session_date: str  # the carrying run's session
    carried_ns: int
    status: CarryStatus = CarryStatus.OPEN
    taken_run_id: str | None = None
    taken_ns: int | None = None
    open_price: float | None = None
    message: str = ""


class MarkRecord(msgspec.Struct, gc=False):
    """A symbol's last price at the end of the tick-time minute starting at ``ts``."""

    run_id: str
    symbol: str
    ts: int
    price: float


class RunUpdate(msgspec.Struct):
    """Fields of the run's row to change; ``None`` leaves one as it is."""

    heartbeat_ns: int | None = None
    counters: dict[str, Any] | None = None
    status: str | None = None
    message: str | None = None
    ended_ns: int | None = None

    def values(self) -> dict[str, Any]:
        values = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}
        if self.message is not None:
            values["message"] = self.message[:1000]
        return values


class Batch(msgspec.Struct):
    """Rows buffered between flushes, stored in one transaction.

    ``batch_id`` (set by the durable writer, ``<run_id>/<n>``) makes storing it
    idempotent: the ledger records the id in the same transaction and skips a batch it
    already holds, so a retry after an ambiguous failure, or a journal replayed twice,
    never doubles a row.
    """

    new_orders: list[OrderRecord] = []
    order_updates: list[OrderUpdate] = []
    fills: list[FillRecord] = []
    risk_events: list[RiskEventRecord] = []
    positions: list[PositionRecord] = []
    marks: list[MarkRecord] = []
    carried: list[CarriedRecord] = []  # stored whole: a later version replaces the row
    run_update: RunUpdate | None = None
    batch_id: str = ""

    def __bool__(self) -> bool:
        return bool(
            self.new_orders
            or self.order_updates
            or self.fills
            or self.risk_events
            or self.positions
            or self.marks
            or self.carried
            or self.run_update
        )

    def rows(self) -> int:
        """How many rows it holds (the run update not counted), for logs."""
        return (
            len(self.new_orders)
            + len(self.order_updates)
            + len(self.fills)
            + len(self.risk_events)
            + len(self.positions)
            + len(self.marks)
            + len(self.carried)
        )


class RunRecords(msgspec.Struct):
    """Everything recovery needs of one run, read in one transaction."""

    orders: list[OrderRecord]
    fills: list[FillRecord]
    positions: list[PositionRecord]
    marks: list[MarkRecord]
