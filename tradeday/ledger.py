"""The ledger: runs, orders, fills, risk events and positions, through SQLAlchemy 2.

It is the truth the report is built from and what recovery reads after a crash. The
engine never writes per tick: it buffers typed records (:mod:`tradeday.records`) and
:meth:`Ledger.write` stores a batch in one transaction from the session's main thread,
through its :class:`~tradeday.ledger_writer.DurableWriter`; a batch with a ``batch_id``
is stored once however often it is written. Reads return the same records. SQLite by
default; any SQLAlchemy URL (PostgreSQL for many workers) works. Times are UTC
nanoseconds (BIGINT): exact and portable across backends.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    create_engine,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select

from tradeday.records import (
    Batch,
    CarriedRecord,
    CarryStatus,
    FillRecord,
    MarkRecord,
    OrderRecord,
    PositionRecord,
    RiskEventRecord,
    RunRecords,
    RunUpdate,
)

R = TypeVar("R", bound=msgspec.Struct)

SCHEMA_VERSION = 2
# Columns that bring a ledger from the previous version to this key's version: (table,
# column, type). New tables need no step (``create_all`` adds them).
MIGRATIONS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (("orders", "tif", "VARCHAR(3) NOT NULL DEFAULT 'day'"),),
}


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
    tif: Mapped[str] = mapped_column(String(3), default="day")


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


class CarriedRow(Base):
    """A position held overnight for the model's next session on the account (CarriedRecord)."""

    __tablename__ = "carried_positions"

    carry_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    broker: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128), index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    qty: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(Float)
    mark: Mapped[float] = mapped_column(Float)
    from_run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    session_date: Mapped[str] = mapped_column(String(10))
    carried_ns: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(8), index=True)
    taken_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    taken_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    open_price: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(String(500), default="")


class MetaRow(Base):
    """The ledger's schema version, so an older ledger is migrated once."""

    __tablename__ = "ledger_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))


class WrittenBatchRow(Base):
    """A batch the ledger holds, by id: what makes a retried or replayed batch land once."""

    __tablename__ = "written_batches"

    batch_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    written_ns: Mapped[int] = mapped_column(BigInteger)


LIVE_STATUSES = ("running",)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ledger URL; None for an in-memory one or a server database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def _prepare_sqlite(url: str) -> None:
    if (path := sqlite_file(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


class Ledger:
    """The ledger database; use it as ``with Ledger(url) as ledger:`` so it is closed."""

    def __init__(self, url: str, *, busy_timeout_s: float = 5.0) -> None:
        """``busy_timeout_s``: how long a SQLite statement waits for another process's lock."""
        _prepare_sqlite(url)
        self.url = url
        sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine: Engine = create_engine(
            url,
            future=True,
            connect_args={"timeout": busy_timeout_s} if sqlite else {},
            pool_pre_ping=True,  # a pooled connection a restarted PostgreSQL dropped is replaced
        )
        migrate(self.engine)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def start_run(self, **values: Any) -> None:
        values.setdefault("host", socket.gethostname())
        values.setdefault("pid", os.getpid())
        values.setdefault("status", "running")
        with Session(self.engine) as s, s.begin():
            s.execute(insert(RunRow), [values])

    def write(self, batch: Batch, run_id: str) -> bool:
        """Store a batch atomically; False if its ``batch_id`` says the ledger already has it."""
        if not batch:
            return True
        with Session(self.engine) as s, s.begin():
            if batch.batch_id:
                if s.get(WrittenBatchRow, batch.batch_id) is not None:
                    return False
                s.add(
                    WrittenBatchRow(
                        batch_id=batch.batch_id, run_id=run_id, written_ns=time.time_ns()
                    )
                )
            if batch.new_orders:
                s.execute(insert(OrderRow), _dicts(batch.new_orders))
            if batch.order_updates:
                s.execute(update(OrderRow), _dicts(batch.order_updates))
            if batch.fills:
                s.execute(insert(FillRow), _dicts(batch.fills))
            if batch.risk_events:
                s.execute(insert(RiskEventRow), _dicts(batch.risk_events))
            for row in _dicts(batch.positions):
                s.merge(PositionRow(**row))
            if batch.marks:
                s.execute(insert(MarkRow), _dicts(batch.marks))
            for row in _dicts(batch.carried):
                s.merge(CarriedRow(**row))
            if batch.run_update is not None and (values := batch.run_update.values()):
                s.execute(update(RunRow).where(RunRow.run_id == run_id).values(**values))
        return True

    def finish_run(
        self, run_id: str, status: str, message: str, ended_ns: int, counters: dict
    ) -> None:
        self.write(Batch(run_update=final_update(status, message, ended_ns, counters)), run_id)

    def run(self, run_id: str) -> RunRow | None:
        with Session(self.engine) as s:
            return s.get(RunRow, run_id)

    def runs(self, session_date: str | None = None) -> list[RunRow]:
        stmt = select(RunRow).order_by(RunRow.started_ns)
        if session_date is not None:
            stmt = stmt.where(RunRow.session_date == session_date)
        with Session(self.engine) as s:
            return list(s.scalars(stmt))

    def orders(self, run_id: str) -> list[OrderRecord]:
        with self.engine.connect() as conn:
            return _orders(conn, run_id)

    def fills(self, run_id: str) -> list[FillRecord]:
        with self.engine.connect() as conn:
            return _fills(conn, run_id)

    def risk_events(self, run_id: str) -> list[RiskEventRecord]:
        t = RiskEventRow.__table__
        stmt = select(t).where(t.c.run_id == run_id).order_by(t.c.id)
        with self.engine.connect() as conn:
            return _records(conn, stmt, RiskEventRecord)

    def positions(self, run_id: str) -> list[PositionRecord]:
        with self.engine.connect() as conn:
            return _positions(conn, run_id)

    def marks(self, run_id: str) -> list[MarkRecord]:
        with self.engine.connect() as conn:
            return _marks(conn, run_id)

    def run_records(self, run_id: str) -> RunRecords:
        """A run's orders, fills, positions and marks, read once in one transaction."""
        with self.engine.connect() as conn, conn.begin():
            return RunRecords(
                _orders(conn, run_id),
                _fills(conn, run_id),
                _positions(conn, run_id),
                _marks(conn, run_id),
            )

    def unfinished_runs(self, broker: str, account: str) -> list[RunRow]:
        """Runs on this broker account still marked running: live elsewhere, or crashed."""
        stmt = select(RunRow).where(
            RunRow.status.in_(LIVE_STATUSES), RunRow.broker == broker, RunRow.account == account
        )
        with Session(self.engine) as s:
            return list(s.scalars(stmt))

    def carried(
        self,
        *,
        account: str | None = None,
        model: str | None = None,
        status: CarryStatus | None = None,
        from_run_id: str | None = None,
        taken_run_id: str | None = None,
    ) -> list[CarriedRecord]:
        """Carried positions, oldest first, filtered by what is given."""
        t = CarriedRow.__table__
        stmt = select(t).order_by(t.c.carried_ns, t.c.carry_id)
        for column, value in (
            (t.c.account, account),
            (t.c.model, model),
            (t.c.status, status),
            (t.c.from_run_id, from_run_id),
            (t.c.taken_run_id, taken_run_id),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        with self.engine.connect() as conn:
            return _records(conn, stmt, CarriedRecord)

    def take_carried(
        self, model: str, broker: str, account: str, run_id: str, now_ns: int
    ) -> list[CarriedRecord]:
        """Take up every open carried position of ``model`` on the account for ``run_id``.

        One transaction, and each row only while it is still open, so two sessions of the
        model never both take the same position.
        """
        t = CarriedRow.__table__
        mine = (t.c.model == model, t.c.broker == broker, t.c.account == account)
        taken = []
        with self.engine.connect() as conn, conn.begin():
            stmt = select(t).where(*mine, t.c.status == CarryStatus.OPEN).order_by(t.c.carry_id)
            for row in _records(conn, stmt, CarriedRecord):
                done = conn.execute(
                    update(t)
                    .where(t.c.carry_id == row.carry_id, t.c.status == CarryStatus.OPEN)
                    .values(status=CarryStatus.TAKEN, taken_run_id=run_id, taken_ns=now_ns)
                )
                if done.rowcount == 1:
                    row.status, row.taken_run_id, row.taken_ns = CarryStatus.TAKEN, run_id, now_ns
                    taken.append(row)
        return taken

    def set_status(self, run_ids: Sequence[str], status: str, message: str, ended_ns: int) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(RunRow)
                .where(RunRow.run_id.in_(list(run_ids)))
                .values(status=status, message=message[:1000], ended_ns=ended_ns)
            )


def schema_version(engine: Engine) -> int | None:
    """The ledger's schema version; None for an empty database."""
    tables = set(inspect(engine).get_table_names())
    if "ledger_meta" in tables:
        with Session(engine) as s:
            row = s.get(MetaRow, "schema_version")
            if row is not None:
                return int(row.value)
    return 1 if "runs" in tables else None  # version 1 had no meta table


def migrate(engine: Engine) -> None:
    """Create the tables, or bring an older ledger up to :data:`SCHEMA_VERSION`."""
    version = schema_version(engine)
    if version is not None and version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the ledger {engine.url!r} was written by a newer tradeday "
            f"(schema v{version}; this one knows v{SCHEMA_VERSION})"
        )
    for step in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
        for table, column, kind in MIGRATIONS.get(step, ()):
            if column in {c["name"] for c in inspect(engine).get_columns(table)}:
                continue  # another process migrated it first
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    Base.metadata.create_all(engine)
    if version != SCHEMA_VERSION:
        with Session(engine) as s, s.begin():
            s.merge(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))


def final_update(status: str, message: str, ended_ns: int, counters: dict) -> RunUpdate:
    """The run row's last change: its final status, why, when, and its counters."""
    return RunUpdate(status=status, message=message, ended_ns=ended_ns, counters=counters)


def _dicts(records: Sequence[msgspec.Struct]) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(r) for r in records]


def _records(conn: Connection, stmt: Select, record: type[R]) -> list[R]:
    """Rows as typed records, converted in bulk (enums from their strings)."""
    return msgspec.convert(list(conn.execute(stmt)), list[record], from_attributes=True)


def _orders(conn: Connection, run_id: str) -> list[OrderRecord]:
    t = OrderRow.__table__
    stmt = select(t).where(t.c.run_id == run_id).order_by(t.c.ts, t.c.client_order_id)
    return _records(conn, stmt, OrderRecord)


def _fills(conn: Connection, run_id: str) -> list[FillRecord]:
    t = FillRow.__table__
    return _records(conn, select(t).where(t.c.run_id == run_id).order_by(t.c.id), FillRecord)


def _positions(conn: Connection, run_id: str) -> list[PositionRecord]:
    t = PositionRow.__table__
    stmt = select(t).where(t.c.run_id == run_id).order_by(t.c.symbol)
    return _records(conn, stmt, PositionRecord)


def _marks(conn: Connection, run_id: str) -> list[MarkRecord]:
    t = MarkRow.__table__
    stmt = select(t).where(t.c.run_id == run_id).order_by(t.c.ts, t.c.symbol)
    return _records(conn, stmt, MarkRecord)
