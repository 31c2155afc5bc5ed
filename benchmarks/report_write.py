"""Report: time to write the DuckDB end-of-day report for a day with 50,000 orders.

A synthetic ledger (SQLite, through ``tradeday.ledger.Ledger`` like a session writes it:
batches of orders, their fills, per-minute marks, positions) for one day on four symbols,
every order filled; then ``tradeday.report.write_report`` into a new DuckDB file, and
again into the same file (the same run rewritten: its rows replaced, staged first like
every write).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from benchmarks.common import ES_DAY, Row, es_window, print_report, workdir
from tradeday.events import MINUTE_NS, Side
from tradeday.ledger import Ledger
from tradeday.records import (
    Batch,
    FillRecord,
    MarkRecord,
    OrderRecord,
    OrderStatus,
    PositionRecord,
)
from tradeday.report import write_report

TARGET_S = 1.0
SYMBOLS = ("AAPL", "MSFT", "NVDA", "IBM")


def synthetic_ledger(path: Path, orders: int, run_id: str = "bench-report") -> Ledger:
    """One run with ``orders`` filled orders spread over the session, written in 1 s batches."""
    window = es_window()
    ledger = Ledger(f"sqlite:///{path}")
    ledger.start_run(
        run_id=run_id,
        session_date=ES_DAY.isoformat(),
        model="volume_modulo",
        params={"name": "volume_modulo"},
        symbols=list(SYMBOLS),
        feed="replay",
        broker="simulated",
        account="simulated",
        started_ns=window.open_ns,
        heartbeat_ns=window.open_ns,
        counters={},
    )
    rng = random.Random(5)
    step = (window.close_ns - window.open_ns) // orders
    held = dict.fromkeys(SYMBOLS, 0)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    batch, marked = Batch(), -1
    for i in range(orders):
        ts = window.open_ns + i * step
        symbol = SYMBOLS[i % len(SYMBOLS)]
        side, qty = rng.choice(("buy", "sell")), rng.randint(1, 10)
        prices[symbol] = round(prices[symbol] + rng.choice((-0.01, 0.0, 0.01)), 2)
        held[symbol] += qty if side == "buy" else -qty
        coid = f"{run_id}-{i + 1}"
        sign = Side(side)
        batch.new_orders.append(
            OrderRecord(
                coid,
                run_id,
                "volume_modulo",
                symbol,
                sign,
                qty,
                ts,
                OrderStatus.FILLED,
                filled_qty=qty,
                avg_fill_price=prices[symbol],
            )
        )
        batch.fills.append(
            FillRecord(run_id, "volume_modulo", coid, symbol, sign, qty, prices[symbol], 0.0, ts)
        )
        minute = ts - ts % MINUTE_NS
        if minute > marked:
            marked = minute
            batch.marks += [MarkRecord(run_id, s, minute, p) for s, p in prices.items()]
        if len(batch.new_orders) >= 1_000 or i == orders - 1:
            ledger.write(batch, run_id)
            batch = Batch()
    positions = [
        PositionRecord(
            run_id, s, "volume_modulo", q, prices[s], prices[s], 0.0, 0.0, window.close_ns
        )
        for s, q in held.items()
    ]
    ledger.write(Batch(positions=positions), run_id)
    ledger.finish_run(run_id, "completed", "bench", window.close_ns, {"orders": orders})
    return ledger


def run(quick: bool = False) -> list[Row]:
    orders = 2_000 if quick else 50_000
    with workdir() as tmp:
        ledger = synthetic_ledger(tmp / "ledger.sqlite", orders)
        try:
            t0 = time.perf_counter()
            write_report(ledger, "bench-report", tmp / "reports.duckdb")
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            write_report(ledger, "bench-report", tmp / "reports.duckdb")
            again = time.perf_counter() - t0
        finally:
            ledger.close()
    note = f"{orders:,} orders and fills, 4 symbols, SQLite ledger"
    return [
        Row(
            "report",
            "write_report, new file",
            first,
            "s",
            f"< {TARGET_S:g}",
            first < TARGET_S,
            note,
        ),
        Row(
            "report", "write_report, run rewritten", again, "s", f"< {TARGET_S:g}", again < TARGET_S
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 orders instead of 50,000")
    args = parser.parse_args()
    print_report(run(args.quick))


if __name__ == "__main__":
    main()
