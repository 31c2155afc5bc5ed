"""Close what a crashed earlier run left open.

A run whose process died (SIGKILL, power loss) is still ``running`` in the ledger with
positions recorded at its last flush. At the next start, and from ``flatten-now``, every
such run on the same broker account is closed with offsetting orders computed from the
ledger (never the whole account, which other models may share) and marked ``crashed``.
A run is only treated as dead when its process is gone (same host) or its heartbeat is
older than :data:`STALE_AFTER_S` (another host), so concurrent sessions are left alone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from tradeday.brokers.base import Broker, BrokerOrder, ExecType
from tradeday.events import NS_PER_S, Side
from tradeday.ledger import Batch, Ledger, RunRow

log = logging.getLogger(__name__)

STALE_AFTER_S = 120.0


@dataclass
class Recovered:
    run_id: str
    closed: dict[str, int] = field(default_factory=dict)
    fills: int = 0


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
    current_run_id: str = "",
    timeout_s: float = 10.0,
) -> list[Recovered]:
    """Flatten and close every dead run on this account; returns what was done."""
    now = time.time_ns()
    done: list[Recovered] = []
    for run in ledger.unfinished_runs(broker.name, account, exclude=[current_run_id]):
        if not is_dead(run, now):
            continue
        rec = Recovered(run.run_id)
        marks: dict[str, float] = {}
        for pos in ledger.positions(run.run_id):
            marks[pos.symbol] = pos.mark
            if pos.qty:
                rec.closed[pos.symbol] = -pos.qty
        batch = Batch()
        for symbol, signed in sorted(rec.closed.items()):
            coid = f"{run.run_id}-recover-{symbol}"
            side = Side.BUY if signed > 0 else Side.SELL
            if broker.find_order(coid) is None:
                order = BrokerOrder(coid, symbol, side, abs(signed), now)
                broker.set_mark(symbol, marks[symbol])
                broker.submit(order)
            batch.new_orders.append(
                {
                    "client_order_id": coid,
                    "run_id": run.run_id,
                    "model": run.model,
                    "symbol": symbol,
                    "side": side.value,
                    "qty": abs(signed),
                    "limit_price": None,
                    "ts": now,
                    "status": "submitted",
                    "filled_qty": 0,
                    "avg_fill_price": 0.0,
                    "reason": "recovery after crash",
                    "purpose": "recovery",
                    "tag": "recovery",
                }
            )
        broker.flush(now)
        deadline = time.monotonic() + timeout_s
        filled: dict[str, int] = {}
        while (
            sum(filled.values()) < sum(abs(q) for q in rec.closed.values())
            and time.monotonic() < deadline
        ):
            while broker.executions:
                ex = broker.executions.popleft()
                if ex.kind in (
                    ExecType.FILL,
                    ExecType.PARTIAL_FILL,
                ) and ex.client_order_id.startswith(run.run_id):
                    filled[ex.symbol] = filled.get(ex.symbol, 0) + ex.qty
                    rec.fills += 1
                    batch.fills.append(
                        {
                            "run_id": run.run_id,
                            "model": run.model,
                            "client_order_id": ex.client_order_id,
                            "symbol": ex.symbol,
                            "side": ex.side.value,
                            "qty": ex.qty,
                            "price": ex.price,
                            "fee": ex.fee,
                            "ts": ex.ts,
                        }
                    )
            if sum(filled.values()) < sum(abs(q) for q in rec.closed.values()):
                time.sleep(0.05)
        for row in batch.new_orders:
            qty = filled.get(row["symbol"], 0)
            row["filled_qty"] = qty
            row["status"] = "filled" if qty >= row["qty"] else "submitted"
            prices = [f["price"] for f in batch.fills if f["symbol"] == row["symbol"]]
            row["avg_fill_price"] = prices[-1] if prices else 0.0
        for pos in ledger.positions(run.run_id):
            batch.positions.append(
                {
                    "run_id": run.run_id,
                    "symbol": pos.symbol,
                    "model": pos.model,
                    "qty": pos.qty
                    + (
                        filled.get(pos.symbol, 0) * (1 if rec.closed.get(pos.symbol, 0) > 0 else -1)
                    ),
                    "avg_price": pos.avg_price,
                    "mark": pos.mark,
                    "realized": pos.realized,
                    "fees": pos.fees,
                    "ts": now,
                }
            )
        ledger.write(batch, run.run_id)
        left = {p.symbol: p.qty for p in ledger.positions(run.run_id) if p.qty}
        message = f"crashed; recovered by {current_run_id or 'flatten-now'}: closed {rec.closed or 'nothing'}"
        if left:
            message += f"; STILL OPEN {left}"
        ledger.set_status([run.run_id], "crashed", message, now)
        log.warning("recovery: run %s %s", run.run_id, message)
        done.append(rec)
    return done
