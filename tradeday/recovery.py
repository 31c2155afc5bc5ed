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
   itself crashed is found at the broker by step 1, so it is never sent twice.
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
from dataclasses import dataclass, field
from typing import Any

from tradeday.book import Book, Position
from tradeday.brokers.base import Broker, BrokerOrder, ExecType, OrderHistory
from tradeday.events import NS_PER_S, Side
from tradeday.ledger import Batch, Ledger, OrderRow, RunRow

log = logging.getLogger(__name__)

STALE_AFTER_S = 120.0
_OPEN = ("submitted", "accepted", "partially_filled")
_LEDGER_STATUS = {
    "filled": "filled",
    "partially_filled": "partially_filled",
    "canceled": "canceled",
    "expired": "canceled",
    "replaced": "canceled",
    "rejected": "rejected",
}


@dataclass
class Recovered:
    run_id: str
    closed: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    synced: int = 0
    left: dict[str, int] = field(default_factory=dict)


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

    ``by`` names who recovers (a run id, "flatten-now", a session's start) in the
    recovered run's message and orders.
    """
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
    replayed = _replay_clock(ledger, run)
    batch = Batch()
    if isinstance(broker, OrderHistory):
        rec.synced = _sync_from_broker(ledger, broker, run, batch, deadline, replayed)
    else:
        for order in ledger.orders(run.run_id):
            if order.status in _OPEN:
                batch.order_updates.append(
                    _update(
                        order,
                        "canceled",
                        order.filled_qty,
                        order.avg_fill_price,
                        "lost in the crash",
                    )
                )
    ledger.write(batch, run.run_id)

    book, marks = _book(ledger, run.run_id)
    attempts: dict[str, int] = {}
    for order in ledger.orders(run.run_id):
        if order.purpose == "recovery":
            attempts[order.symbol] = attempts.get(order.symbol, 0) + 1
    batch = Batch()
    orders: dict[str, dict[str, Any]] = {}
    now = replayed or time.time_ns()
    for symbol, qty in sorted(book.open_positions().items()):
        coid = f"{run.run_id}-recover-{symbol}-{attempts.get(symbol, 0) + 1}"
        side = Side.SELL if qty > 0 else Side.BUY
        rec.closed[symbol] = -qty
        if broker.find_order(coid) is None:
            broker.set_mark(symbol, marks[symbol])
            broker.submit(BrokerOrder(coid, symbol, side, abs(qty), now))
        orders[coid] = {
            "client_order_id": coid,
            "run_id": run.run_id,
            "model": run.model,
            "symbol": symbol,
            "side": side.value,
            "qty": abs(qty),
            "limit_price": None,
            "ts": now,
            "status": "submitted",
            "filled_qty": 0,
            "avg_fill_price": 0.0,
            "reason": f"recovery after a crash, by {by}",
            "purpose": "recovery",
            "tag": "recovery",
        }
    broker.flush(now)
    while any(o["status"] in _OPEN for o in orders.values()):
        while broker.executions:
            ex = broker.executions.popleft()
            row = orders.get(ex.client_order_id)
            if row is None:
                continue
            if ex.kind in (ExecType.FILL, ExecType.PARTIAL_FILL):
                filled = row["filled_qty"] + ex.qty
                row["avg_fill_price"] = (
                    row["avg_fill_price"] * row["filled_qty"] + ex.price * ex.qty
                ) / filled
                row["filled_qty"] = filled
                row["status"] = "filled" if filled >= row["qty"] else "partially_filled"
                rec.fills += 1
                batch.fills.append(
                    _fill(
                        run, ex.client_order_id, ex.symbol, ex.side, ex.qty, ex.price, ex.fee, now
                    )
                )
            elif ex.kind in (ExecType.REJECTED, ExecType.CANCELED):
                row["status"] = ex.kind.value
                row["reason"] = f"{row['reason']}: {ex.reason}"[:500]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    batch.new_orders = list(orders.values())
    ledger.write(batch, run.run_id)

    book, marks = _book(ledger, run.run_id)
    batch = Batch(
        positions=[_position(run, s, p, marks[s], now) for s, p in book.positions.items()]
    )
    ledger.write(batch, run.run_id)
    rec.left = book.open_positions()
    message = f"crashed; recovered by {by}"
    if rec.synced:
        message += f": {rec.synced} orders/fills taken from the broker"
    message += f"; closed {rec.closed or 'nothing'}"
    if rec.left:
        message += f"; STILL OPEN {rec.left}"
    ledger.set_status([run.run_id], "crashed", message, time.time_ns())
    log.warning("recovery: run %s %s", run.run_id, message)
    return rec


def _replay_clock(ledger: Ledger, run: RunRow) -> int | None:
    """A replayed run's last tick time, to stamp recovery's rows on the run's own clock.

    The broker's times are wall-clock, years off a replay's ticks; a live run (None) keeps them.
    """
    if run.feed != "replay":
        return None
    stamps = [o.ts for o in ledger.orders(run.run_id)] + [f.ts for f in ledger.fills(run.run_id)]
    return max(stamps, default=0) or None


def _sync_from_broker(
    ledger: Ledger,
    broker: OrderHistory,
    run: RunRow,
    batch: Batch,
    deadline: float,
    replayed: int | None,
) -> int:
    """Bring the ledger's orders and fills of ``run`` up to the broker's; returns the changes."""
    prefix = f"{run.run_id}-"
    at_broker = broker.orders_of(prefix, run.started_ns)
    for order in at_broker:
        if order.working:
            broker.cancel(order.broker_order_id)
    while any(o.working for o in at_broker) and time.monotonic() < deadline:
        time.sleep(0.05)
        at_broker = broker.orders_of(prefix, run.started_ns)
    known = {o.client_order_id: o for o in ledger.orders(run.run_id)}
    filled: dict[str, tuple[int, float]] = {}
    for f in ledger.fills(run.run_id):
        qty, notional = filled.get(f.client_order_id, (0, 0.0))
        filled[f.client_order_id] = (qty + f.qty, notional + f.qty * f.price)
    changes = 0
    for order in at_broker:
        cid = order.client_order_id
        status = _LEDGER_STATUS.get(order.status, "accepted")
        row = known.pop(cid, None)
        if row is None:
            changes += 1
            batch.new_orders.append(
                {
                    "client_order_id": cid,
                    "run_id": run.run_id,
                    "model": run.model,
                    "symbol": order.symbol,
                    "side": order.side.value,
                    "qty": order.qty,
                    "limit_price": None,
                    "ts": replayed or order.submitted_ns,
                    "status": status,
                    "filled_qty": order.filled_qty,
                    "avg_fill_price": order.filled_avg_price,
                    "reason": "sent before the crash; recorded from the broker",
                    "purpose": "recovery" if "-recover-" in cid else "model",
                    "tag": "from broker",
                }
            )
        elif (row.status, row.filled_qty) != (status, order.filled_qty):
            changes += 1
            batch.order_updates.append(
                _update(row, status, order.filled_qty, order.filled_avg_price, row.reason)
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
        if row.status in _OPEN:
            changes += 1
            batch.order_updates.append(
                _update(
                    row, "rejected", row.filled_qty, row.avg_fill_price, "never reached the broker"
                )
            )
    return changes


def _book(ledger: Ledger, run_id: str) -> tuple[Book, dict[str, float]]:
    """The run's positions rebuilt from its fills, and a mark per symbol."""
    book = Book()
    marks = {p.symbol: p.mark for p in ledger.positions(run_id)}
    for f in ledger.fills(run_id):
        book.apply_fill(f.symbol, f.qty if f.side == "buy" else -f.qty, f.price, f.fee)
        marks[f.symbol] = marks.get(f.symbol) or f.price
    return book, marks


def _update(
    row: OrderRow, status: str, filled_qty: int, avg_price: float, reason: str
) -> dict[str, Any]:
    return {
        "client_order_id": row.client_order_id,
        "status": status,
        "filled_qty": filled_qty,
        "avg_fill_price": avg_price,
        "reason": reason[:500],
    }


def _fill(
    run: RunRow,
    coid: str,
    symbol: str,
    side: Side,
    qty: int,
    price: float,
    fee: float,
    ts: int,
) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "model": run.model,
        "client_order_id": coid,
        "symbol": symbol,
        "side": side.value,
        "qty": qty,
        "price": price,
        "fee": fee,
        "ts": ts,
    }


def _position(run: RunRow, symbol: str, pos: Position, mark: float, now: int) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "symbol": symbol,
        "model": run.model,
        "qty": pos.qty,
        "avg_price": pos.avg_price,
        "mark": mark,
        "realized": pos.realized,
        "fees": pos.fees,
        "ts": now,
    }
