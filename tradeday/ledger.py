"""The ledger: runs, orders, fills, risk events and positions, through SQLAlchemy 2.

It is the truth the report is built from and what recovery reads after a crash. The
engine never writes per tick: it buffers rows and :meth:`Ledger.write` stores a batch in
one transaction from the session's main thread. SQLite by default; any SQLAlchemy URL
(PostgreSQL for many workers) works. Times are UTC nanoseconds (BIGINT): exact and
portable across backends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    create_engine,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_date: Mapped[str] = mapped_column(String(10), index=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    symbols: Mapped[list[str]] = mapped_column(JSON)
    feed: Mapped[str] = mapped_column(String(32))
    broker: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128), default="")
    deployment: Mapped[str] = mapped_column(String(128), default="")
    flow_run_id: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(String(1000), default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_ns: Mapped[int] = mapped_column(BigInteger)
    ended_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    heartbeat_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    counters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class OrderRow(Base):
    __tablename__ = "orders"

    client_order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    model: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[int] = mapped_column(Integer)
    limit_price: Mapped[float | None] = mapped_column(Float, nullable=True)
    ts: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    filled_qty: Mapped[int] = mapped_column(Integer, default=0)
    avg_fill_price: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(String(500), default="")
    purpose: Mapped[str] = mapped_column(String(16), default="model")
    tag: Mapped[str] = mapped_column(String(64), default="")


class FillRow(Base):
    __tablename__ = "fills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    model: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[float] = mapped_column(Float)
    fee: Mapped[float] = mapped_column(Float, default=0.0)
    ts: Mapped[int] = mapped_column(BigInteger)


class RiskEventRow(Base):
    __tablename__ = "risk_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    model: Mapped[str] = mapped_column(String(64))
    ts: Mapped[int] = mapped_column(BigInteger)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))


class PositionRow(Base):
    """A run's position per symbol, as of the last flush: what recovery flattens after a crash."""

    __tablename__ = "positions"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    avg_price: Mapped[float] = mapped_column(Float)
    mark: Mapped[float] = mapped_column(Float)
    realized: Mapped[float] = mapped_column(Float)
    fees: Mapped[float] = mapped_column(Float)
    ts: Mapped[int] = mapped_column(BigInteger)


class MarkRow(Base):
    """A symbol's last price at the end of a tick-time minute: the report's equity curve marks."""

    __tablename__ = "marks"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # the minute's start
    price: Mapped[float] = mapped_column(Float)


@dataclass
class Batch:
    """Rows buffered by the engine between flushes."""

    new_orders: list[dict[str, Any]] = field(default_factory=list)
    order_updates: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    risk_events: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    run_update: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.new_orders
            or self.order_updates
            or self.fills
            or self.risk_events
            or self.positions
            or self.marks
            or self.run_update
        )


LIVE_STATUSES = ("running",)


def _prepare_sqlite(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


class Ledger:
    def __init__(self, url: str) -> None:
        _prepare_sqlite(url)
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def start_run(self, **values: Any) -> None:
        values.setdefault("host", socket.gethostname())
        values.setdefault("pid", os.getpid())
        values.setdefault("status", "running")
        with Session(self.engine) as s, s.begin():
            s.execute(insert(RunRow), [values])

    def write(self, batch: Batch, run_id: str) -> None:
        """Store a batch atomically; the run's heartbeat and counters ride along."""
        if not batch:
            return
        with Session(self.engine) as s, s.begin():
            if batch.new_orders:
                s.execute(insert(OrderRow), batch.new_orders)
            if batch.order_updates:
                s.execute(update(OrderRow), batch.order_updates)
            if batch.fills:
                s.execute(insert(FillRow), batch.fills)
            if batch.risk_events:
                s.execute(insert(RiskEventRow), batch.risk_events)
            for row in batch.positions:
                s.merge(PositionRow(**row))
            if batch.marks:
                s.execute(insert(MarkRow), batch.marks)
            if batch.run_update:
                s.execute(update(RunRow).where(RunRow.run_id == run_id).values(**batch.run_update))

    def finish_run(
        self, run_id: str, status: str, message: str, ended_ns: int, counters: dict
    ) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(RunRow)
                .where(RunRow.run_id == run_id)
                .values(status=status, message=message[:1000], ended_ns=ended_ns, counters=counters)
            )

    def run(self, run_id: str) -> RunRow | None:
        with Session(self.engine) as s:
            return s.get(RunRow, run_id)

    def runs(self, session_date: str | None = None) -> list[RunRow]:
        stmt = select(RunRow).order_by(RunRow.started_ns)
        if session_date is not None:
            stmt = stmt.where(RunRow.session_date == session_date)
        with Session(self.engine) as s:
            return list(s.scalars(stmt))

    def orders(self, run_id: str) -> list[OrderRow]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(OrderRow)
                    .where(OrderRow.run_id == run_id)
                    .order_by(OrderRow.ts, OrderRow.client_order_id)
                )
            )

    def fills(self, run_id: str) -> list[FillRow]:
        with Session(self.engine) as s:
            return list(
                s.scalars(select(FillRow).where(FillRow.run_id == run_id).order_by(FillRow.id))
            )

    def risk_events(self, run_id: str) -> list[RiskEventRow]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    select(RiskEventRow)
                    .where(RiskEventRow.run_id == run_id)
                    .order_by(RiskEventRow.id)
                )
            )

    def positions(self, run_id: str) -> list[PositionRow]:
        with Session(self.engine) as s:
            return list(s.scalars(select(PositionRow).where(PositionRow.run_id == run_id)))

    def unfinished_runs(self, broker: str, account: str) -> list[RunRow]:
        """Runs on this broker account still marked running: live elsewhere, or crashed."""
        stmt = select(RunRow).where(
            RunRow.status.in_(LIVE_STATUSES), RunRow.broker == broker, RunRow.account == account
        )
        with Session(self.engine) as s:
            return list(s.scalars(stmt))

    def set_status(self, run_ids: Sequence[str], status: str, message: str, ended_ns: int) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(RunRow)
                .where(RunRow.run_id.in_(list(run_ids)))
                .values(status=status, message=message[:1000], ended_ns=ended_ns)
            )
