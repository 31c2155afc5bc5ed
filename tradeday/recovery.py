"""Close what a crashed earlier run left open, without doubling anything.

A run whose process died (SIGKILL, power loss) is still ``running`` in the ledger, which
holds what it had flushed (about once a second) and not what happened after. At the next
start, and from ``flatten-now``, every such run on the same broker account is recovered:

1. **Compare the ledger with the broker.** A broker that keeps orders across processes
   (Alpaca; :class:`~tradeday.brokers.base.OrderHistory`) is asked for every order whose ``client_order_id``
   starts with the run's id, including ones sent after the last flush. Orders still
   working are cancelled first; then the ledger takes the broker's status and fills for
   each (missing orders and fills are added, matched by ``client_order_id``), and orders
   the broker never saw are marked rejected. A simulator's state died with the process,
   so its ledger is all there is: its unfinished orders are marked cancelled.
2. **Flatten from the ledger.** The run's positions are rebuilt from its fills and closed
   with offsetting orders named ``<run_id>-recover-<symbol>-<attempt>``; a recovery that
   itself crashed is found at the broker by step 1, so it is never sent twice. The
   simulator fills them at each symbol's latest known price (:func:`latest_prices`).

The run's rows are read once (:meth:`Ledger.run_records`); recovery's own changes are
kept in memory alongside them.
3. **Record and close the run**: orders, fills and positions go to the ledger and the run
   is marked ``crashed``. Other runs of the account are never touched (never the whole
   account, which other models may share).

A run is only treated as dead when its process is gone (same host) or its heartbeat is
older than :data:`STALE_AFTER_S` (another host), so concurrent sessions are left alone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.base import overnight_allowance
from tradeday.book import Book, Position
from tradeday.brokers.base import Broker, BrokerError, BrokerOrder, ExecType, OrderHistory
from tradeday.engine import order_prefix
from tradeday.events import MINUTE_NS, NS_PER_S, Side
from tradeday.journal import replay_journal
from tradeday.ledger import Ledger, RunRow
from tradeday.records import (
    Batch,
    CarriedRecord,
    CarryStatus,
    FillRecord,
    OrderRecord,
    OrderStatus,
    OrderUpdate,
    PositionRecord,
    RunRecords,
)

log = logging.getLogger(__name__)

STALE_AFTER_S = 120.0
_LEDGER_STATUS = {  # an Alpaca order status as the ledger records it
    "filled": OrderStatus.FILLED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "replaced": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


@dataclass
class Recovered:
    run_id: str
    closed: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    synced: int = 0
    left: dict[str, int] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=dict)
    returned: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(run: RunRow, now_ns: int) -> bool:
    if run.host == socket.gethostname():
        return run.pid != os.getpid() and not _process_alive(run.pid)
    return now_ns - run.heartbeat_ns > STALE_AFTER_S * NS_PER_S


def recover(
    ledger: Ledger,
    broker: Broker,
    account: str,
    *,
    by: str = "flatten-now",
    timeout_s: float = 10.0,
) -> list[Recovered]:
    """Reconcile, flatten and close every dead run on this account; returns what was done.

    Journaled batches (rows a run could not get into the ledger before it ended, see
    :mod:`tradeday.journal`) are replayed first, so recovery reads complete runs.

    ``by`` names who recovers (a run id, "flatten-now", a session's start) in the
    recovered run's message and orders.
    """
    replay_journal(ledger)  # rows a run could not write before it ended come first
    done = []
    for run in ledger.unfinished_runs(broker.name, account):
        if is_dead(run, time.time_ns()):
            broker.start()  # idempotent; connects only when there is something to recover
            done.append(_recover_run(ledger, broker, run, by, timeout_s))
    return done


def _recover_run(
    ledger: Ledger, broker: Broker, run: RunRow, by: str, timeout_s: float
) -> Recovered:
    rec = Recovered(run.run_id)
    deadline = time.monotonic() + timeout_s
    rows = ledger.run_records(run.run_id)  # the only read: what follows is kept in memory
    orders = {o.client_order_id: o for o in rows.orders}
    fills = list(rows.fills)
    replayed = _replay_clock(run, rows)
    batch = Batch()
    if isinstance(broker, OrderHistory):
        rec.synced = _sync_from_broker(broker, run, rows, batch, deadline, replayed)
    else:
        for order in rows.orders:
            if order.status.is_open:
                batch.order_updates.append(
                    OrderUpdate(
                        order.client_order_id,
                        OrderStatus.CANCELED,
                        order.filled_qty,
                        order.avg_fill_price,
                        "lost in the crash",
                    )
                )
    ledger.write(batch, run.run_id)
    for order in batch.new_orders:
        orders[order.client_order_id] = order
    for change in batch.order_updates:
        orders[change.client_order_id].apply(change)
    fills += batch.fills

    # a position it took up and never traded goes back to the ledger as it was: the
    # night it was carried for has not ended (its next open was never reached)
    traded = {f.symbol for f in fills}
    carried_in = ledger.carried(taken_run_id=run.run_id)
    returned = [c for c in carried_in if c.symbol not in traded]
    carried_in = [c for c in carried_in if c.symbol in traded]
    for c in returned:
        c.status, c.taken_run_id, c.taken_ns, c.open_price = CarryStatus.OPEN, None, None, None
        c.message = f"taken up by {run.run_id}, which crashed before trading it; open again"
    book = _book(fills, carried_in)
    prices = {**{c.symbol: c.mark for c in carried_in}, **latest_prices(rows, fills)}
    attempts: dict[str, int] = {}
    for order in orders.values():
        if order.purpose == "recovery":
            attempts[order.symbol] = attempts.get(order.symbol, 0) + 1
    now = replayed or time.time_ns()
    hold = overnight_allowance(run.params)
    excess = {}
    for symbol, qty in sorted(book.open_positions().items()):
        if over := qty - max(-hold, min(hold, qty)):
            excess[symbol] = over
    closing = {
        f"{run.run_id}-recover-{symbol}-{attempts.get(symbol, 0) + 1}": (symbol, qty)
        for symbol, qty in excess.items()
    }
    rec.closed = {symbol: -qty for symbol, qty in excess.items()}
    batch = _offset(broker, run, closing, prices, now, f"recovery after a crash, by {by}", deadline)
    rec.fills = len(batch.fills)
    ledger.write(batch, run.run_id)
    queued = _queued_at_broker(broker, run, batch, excess, book, prices, now, by)
    rec.queued = {c.symbol: -c.qty for c in queued}

    for f in batch.fills:
        book.apply_fill(f.symbol, f.signed_qty, f.price, f.fee)
    prices = {**prices, **latest_prices(rows, fills + batch.fills)}
    batch = Batch(
        positions=[_position(run, s, p, prices[s], now) for s, p in book.positions.items()]
    )
    batch.positions += [  # what it gave back is no longer its position
        PositionRecord(run.run_id, c.symbol, run.model, 0, 0.0, c.mark, 0.0, 0.0, now)
        for c in returned
        if c.symbol not in book.positions
    ]
    batch.carried = returned + queued
    after_queued = {  # what is left once the queued closes fill
        s: q - excess[s] if s in rec.queued else q for s, q in book.open_positions().items()
    }
    if hold:  # what its model may hold overnight is carried, not sold (docs/operations.md)
        batch.carried += [
            CarriedRecord(
                carry_id=f"{run.run_id}/{symbol}",
                model=run.model,
                broker=run.broker,
                account=run.account,
                symbol=symbol,
                qty=qty,
                cost=book.positions[symbol].avg_price,
                mark=prices[symbol],
                from_run_id=run.run_id,
                session_date=run.session_date,
                carried_ns=now,
                message=f"held by a crashed run; carried by {by}",
            )
            for symbol, qty in sorted(after_queued.items())
            if qty and abs(qty) <= hold
        ]
        rec.carried = {c.symbol: c.qty for c in batch.carried if c.status is CarryStatus.OPEN}
    ledger.write(batch, run.run_id)
    rec.returned = {c.symbol: c.qty for c in returned}
    rec.left = {s: q for s, q in book.open_positions().items() if s not in rec.carried | rec.queued}
    message = f"crashed; recovered by {by}"
    if rec.synced:
        message += f": {rec.synced} orders/fills taken from the broker"
    message += f"; closed {rec.closed or 'nothing'}"
    if rec.queued:
        message += f"; flatten queued for the next open: {rec.queued}"
    if rec.carried:
        message += f"; carried for the next session {rec.carried}"
    if returned:
        message += f"; gave back, untraded, { ({c.symbol: c.qty for c in returned}) }"
    if rec.left:
        message += f"; STILL OPEN {rec.left}"
    ledger.set_status([run.run_id], "crashed", message, time.time_ns())
    log.warning("recovery: run %s %s", run.run_id, message)
    return rec


def close_carried(
    ledger: Ledger,
    broker: Broker,
    account: str,
    *,
    by: str = "flatten-now",
    timeout_s: float = 10.0,
    queued_only: bool = False,
) -> dict[str, int]:
    """Close every position carried overnight on this account and not yet taken up
    (``queued_only``: only confirm the closes already queued at the broker).

    Each is closed with an offsetting market order of the run that carried it, named
    ``<run_id>-uncarry-<symbol>``; a close that was sent before (found at the broker) is
    not sent again. Filled, the carried row is ``closed``. Still working at the broker when
    the wait ends (Alpaca queues an order placed outside hours for the next open), it is
    ``queued``: not flat, and no session takes it up; a later call confirms the fill.
    Returns symbol -> quantity closed by this call.
    """
    deadline = time.monotonic() + timeout_s
    closed: dict[str, int] = {}
    for row in ledger.carried(account=account):
        run = ledger.run(row.from_run_id)
        wanted = (CarryStatus.QUEUED,) if queued_only else (CarryStatus.OPEN, CarryStatus.QUEUED)
        if row.status not in wanted or run is None:
            continue
        if run.broker != broker.name:
            continue
        broker.start()
        coid = f"{row.from_run_id}-uncarry-{row.symbol}"
        now = time.time_ns() if run.feed != "replay" else row.carried_ns
        if row.status is CarryStatus.QUEUED:
            batch, working = _confirm_queued(ledger, broker, run, row, now)
        else:
            batch = _offset(
                broker,
                run,
                {coid: (row.symbol, row.qty)},
                {row.symbol: row.mark},
                now,
                f"held overnight; closed by {by}",
                deadline,
            )
            working = any(o.status.is_open for o in batch.new_orders)
        filled = sum(f.qty for f in batch.fills)
        if filled == abs(row.qty):
            row.status, row.message = CarryStatus.CLOSED, f"closed by {by}"
        elif working:
            if row.status is CarryStatus.QUEUED:
                continue  # still waiting for the open: nothing changed
            row.status = CarryStatus.QUEUED
            row.message = f"flatten queued for the next open ({coid}), by {by}"
        else:
            row.status = CarryStatus.OPEN
            row.message = f"{by}: the close of {row.symbol} did not fill; still carried"
        batch.carried = [row]
        ledger.write(batch, run.run_id)
        if filled:
            closed[row.symbol] = closed.get(row.symbol, 0) + (-filled if row.qty > 0 else filled)
        log.warning("%s: carried %s %s of %s: %s", by, row.symbol, row.qty, run.run_id, row.message)
    return closed


def _queued_at_broker(
    broker: Broker,
    run: RunRow,
    batch: Batch,
    excess: dict[str, int],
    book: Book,
    prices: dict[str, float],
    now: int,
    by: str,
) -> list[CarriedRecord]:
    """Recovery's closes that the broker queued for the next open (the market is closed),
    as ``queued`` carried rows: not STILL OPEN, never sent again, and confirmed by the next
    :func:`close_carried` (see :meth:`TradingSession._queued_closes` for a session's)."""
    working = [o for o in batch.new_orders if o.status.is_open and o.filled_qty == 0]
    if not working:
        return []
    try:
        if broker.market_open():
            return []
    except BrokerError as err:  # cannot tell: they stay STILL OPEN
        log.error("recovery: could not ask the broker about the queued closes: %s", err)
        return []
    return [
        CarriedRecord(
            carry_id=f"{run.run_id}/{o.symbol}/close",
            model=run.model,
            broker=run.broker,
            account=run.account,
            symbol=o.symbol,
            qty=excess[o.symbol],
            cost=book.positions[o.symbol].avg_price,
            mark=prices[o.symbol],
            from_run_id=run.run_id,
            session_date=run.session_date,
            carried_ns=now,
            status=CarryStatus.QUEUED,
            message=f"flatten queued for the next open ({o.client_order_id}), by {by}",
        )
        for o in working
    ]


def _confirm_queued(
    ledger: Ledger, broker: Broker, run: RunRow, row: CarriedRecord, now: int
) -> tuple[Batch, bool]:
    """What became of a close queued at the broker: its fills, its orders' new states and
    the run's position as a batch for the run, and whether any is still working.

    The queued closes are the run's orders of the symbol still open in its ledger (a
    session's flatten, or flatten-now's ``-uncarry-`` order); the broker says what they
    became, so nothing is ever sent again for them.
    """
    orders = [o for o in ledger.orders(run.run_id) if o.symbol == row.symbol and o.status.is_open]
    states = {o.client_order_id: broker.find_order(o.client_order_id) for o in orders}
    if any(
        s is None or s.kind in (ExecType.ACCEPTED, ExecType.PARTIAL_FILL) for s in states.values()
    ):
        return Batch(), True
    batch = Batch()
    for order in orders:
        state = states[order.client_order_id]
        assert state is not None
        coid = order.client_order_id
        if state.kind is not ExecType.FILL:
            update = OrderUpdate(coid, OrderStatus(state.kind.value), 0, 0.0, state.reason)
            batch.order_updates.append(update)
            continue
        batch.fills.append(
            _fill(run, coid, row.symbol, order.side, state.qty, state.price, state.fee, now)
        )
        update = OrderUpdate(coid, OrderStatus.FILLED, state.qty, state.price, "filled at the open")
        batch.order_updates.append(update)
    if batch.fills:  # the run's position in the symbol, with the fills at the open
        book = _book(
            ledger.fills(run.run_id) + batch.fills, ledger.carried(taken_run_id=run.run_id)
        )
        position = book.positions[row.symbol]
        batch.positions = [_position(run, row.symbol, position, batch.fills[-1].price, now)]
    return batch, False


def _offset(
    broker: Broker,
    run: RunRow,
    closing: dict[str, tuple[str, int]],
    prices: dict[str, float],
    now: int,
    reason: str,
    deadline: float,
) -> Batch:
    """Send an offsetting order per ``client_order_id -> (symbol, position)`` unless the
    broker has it already, and wait (until ``deadline``) for the fills: the orders and
    fills, as a batch for the run."""
    batch = Batch()
    sent: dict[str, OrderRecord] = {}
    for coid, (symbol, qty) in closing.items():
        side = Side.SELL if qty > 0 else Side.BUY
        if broker.find_order(coid) is None:
            broker.set_mark(symbol, prices[symbol])  # the simulator fills at the latest price
            broker.submit(BrokerOrder(coid, symbol, side, abs(qty), now))
        sent[coid] = OrderRecord(
            coid,
            run.run_id,
            run.model,
            symbol,
            side,
            abs(qty),
            now,
            reason=reason,
            purpose="recovery",
            tag="recovery",
        )
    broker.flush(now)
    while any(o.status.is_open for o in sent.values()):
        while broker.executions:
            ex = broker.executions.popleft()
            order = sent.get(ex.client_order_id)
            if order is None:
                continue
            if ex.kind in (ExecType.FILL, ExecType.PARTIAL_FILL):
                order.add_fill(ex.qty, ex.price)
                batch.fills.append(
                    _fill(
                        run, ex.client_order_id, ex.symbol, ex.side, ex.qty, ex.price, ex.fee, now
                    )
                )
            elif ex.kind in (ExecType.REJECTED, ExecType.CANCELED):
                order.status = OrderStatus(ex.kind.value)
                order.reason = f"{order.reason}: {ex.reason}"[:500]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    batch.new_orders = list(sent.values())
    return batch


def _replay_clock(run: RunRow, rows: RunRecords) -> int | None:
    """A replayed run's last tick time, to stamp recovery's rows on the run's own clock.

    The broker's times are wall-clock, years off a replay's ticks; a live run (None) keeps them.
    """
    if run.feed != "replay":
        return None
    stamps = [o.ts for o in rows.orders] + [f.ts for f in rows.fills]
    return max(stamps + [m.ts for m in rows.marks], default=0) or None


def latest_prices(rows: RunRecords, fills: Sequence[FillRecord]) -> dict[str, float]:
    """Each symbol's latest known price: the newest of its minute marks, position marks, fills.

    A crashed run's last fill can be long before its last tick; the ledger's minute marks
    (stamped at the minute's end here) and the last flushed positions know later prices.
    On equal times a position's mark wins over a minute mark, and both over a fill.
    """
    latest: dict[str, tuple[int, float]] = {}

    def offer(symbol: str, ts: int, price: float) -> None:
        if symbol not in latest or ts >= latest[symbol][0]:
            latest[symbol] = (ts, price)

    for f in fills:
        offer(f.symbol, f.ts, f.price)
    for m in rows.marks:
        offer(m.symbol, m.ts + MINUTE_NS, m.price)
    for p in rows.positions:
        offer(p.symbol, p.ts, p.mark)
    return {symbol: price for symbol, (_, price) in latest.items()}


def _sync_from_broker(
    broker: OrderHistory,
    run: RunRow,
    rows: RunRecords,
    batch: Batch,
    deadline: float,
    replayed: int | None,
) -> int:
    """Bring the ledger's orders and fills of ``run`` up to the broker's; returns the changes."""
    prefix = order_prefix(run.run_id)
    at_broker = broker.orders_of(prefix, run.started_ns)
    for order in at_broker:
        if order.working:
            broker.cancel(order.broker_order_id)
    while any(o.working for o in at_broker) and time.monotonic() < deadline:
        time.sleep(0.05)
        at_broker = broker.orders_of(prefix, run.started_ns)
    known = {o.client_order_id: o for o in rows.orders}
    filled: dict[str, tuple[int, float]] = {}
    for f in rows.fills:
        qty, notional = filled.get(f.client_order_id, (0, 0.0))
        filled[f.client_order_id] = (qty + f.qty, notional + f.qty * f.price)
    changes = 0
    for order in at_broker:
        cid = order.client_order_id
        status = _LEDGER_STATUS.get(order.status, OrderStatus.ACCEPTED)
        row = known.pop(cid, None)
        if row is None:
            changes += 1
            batch.new_orders.append(
                OrderRecord(
                    cid,
                    run.run_id,
                    run.model,
                    order.symbol,
                    order.side,
                    order.qty,
                    replayed or order.submitted_ns,
                    status,
                    filled_qty=order.filled_qty,
                    avg_fill_price=order.filled_avg_price,
                    reason="sent before the crash; recorded from the broker",
                    purpose="recovery" if "-recover-" in cid else "model",
                    tag="from broker",
                )
            )
        elif (row.status, row.filled_qty) != (status, order.filled_qty):
            changes += 1
            batch.order_updates.append(
                OrderUpdate(cid, status, order.filled_qty, order.filled_avg_price, row.reason)
            )
        qty, notional = filled.get(cid, (0, 0.0))
        missing = order.filled_qty - qty
        if missing > 0:
            changes += 1
            price = (order.filled_avg_price * order.filled_qty - notional) / missing
            batch.fills.append(
                _fill(
                    run,
                    cid,
                    order.symbol,
                    order.side,
                    missing,
                    price,
                    0.0,
                    replayed or order.updated_ns,
                )
            )
    for row in known.values():
        if row.status.is_open:
            changes += 1
            batch.order_updates.append(
                OrderUpdate(
                    row.client_order_id,
                    OrderStatus.REJECTED,
                    row.filled_qty,
                    row.avg_fill_price,
                    "never reached the broker",
                )
            )
    return changes


def _book(fills: Sequence[FillRecord], carried_in: Sequence[CarriedRecord] = ()) -> Book:
    """The run's positions rebuilt from what it took up from an earlier session and its fills."""
    book = Book()
    for c in carried_in:
        book.carry(c.symbol, c.qty, c.cost, c.mark)
    for f in fills:
        book.apply_fill(f.symbol, f.signed_qty, f.price, f.fee)
    return book


def _fill(
    run: RunRow,
    coid: str,
    symbol: str,
    side: Side,
    qty: int,
    price: float,
    fee: float,
    ts: int,
) -> FillRecord:
    return FillRecord(run.run_id, run.model, coid, symbol, side, qty, price, fee, ts)


def _position(run: RunRow, symbol: str, pos: Position, mark: float, now: int) -> PositionRecord:
    return PositionRecord(
        run.run_id, symbol, run.model, pos.qty, pos.avg_price, mark, pos.realized, pos.fees, now
    )
