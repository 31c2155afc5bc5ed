"""Sweep: the 19 bundled January-2023 bar days × the 5 bar-trading models on AAPL, MSFT, NVDA, IBM.

95 sessions (issue 18). Side by side in the same run, over the same work: the bare backtest
loop (``tradeday.sweep.run_combination`` for every combination, one process), the same loop
on a plain ``concurrent.futures`` pool of 2 processes (the yardstick for the process cost
alone, no Prefect), and the ``sweep`` flow with 1 and 2 worker processes on a Prefect test
server started beforehand (its startup is not counted; the workers' start is). The overnight
model (``buy_close_sell_open``) trades its days in order within its combination on every
way. ``volume_modulo`` trades on ticks, which a bar recording does not hold. Goal: under
60 s for the sweep.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date

from benchmarks.common import Row, print_report, workdir
from tradeday import sweep

TARGET_S = 60.0
MODELS = [
    "buy_close_sell_open",
    "ma_crossover",
    "mean_reversion",
    "moody_trader",
    "opening_momentum",
]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "IBM"]
START, END = date(2023, 1, 3), date(2023, 1, 30)


def run(quick: bool = False) -> list[Row]:
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep as sweep_flow

    models = MODELS[:2] if quick else MODELS
    end = date(2023, 1, 4) if quick else END
    plan = sweep.plan(models_=models, symbols=SYMBOLS, start=START, end=end)
    t0 = time.perf_counter()
    for combination in plan.combinations:
        sweep.run_combination(combination, plan.days)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(
            pool.map(sweep.run_combination, plan.combinations, [plan.days] * len(plan.combinations))
        )
    pooled = time.perf_counter() - t0
    rows = [
        Row("sweep", "sessions", plan.sessions, "", note=f"{len(plan.days)} days × {len(models)}"),
        Row(
            "sweep", "bare backtest loop", bare, "s", note=f"{plan.sessions / bare:.1f} sessions/s"
        ),
        Row(
            "sweep",
            "bare loop, 2 plain processes",
            pooled,
            "s",
            note=f"{plan.sessions / pooled:.1f} sessions/s, {pooled / bare:.2f}× the bare loop",
        ),
    ]
    with prefect_test_harness(server_startup_timeout=180), workdir() as tmp:
        for workers in (1, 2):
            t0 = time.perf_counter()
            sweep_flow(
                symbols=SYMBOLS,
                models=models,
                start=START,
                end=end,
                report_path=str(tmp / f"sweep-{workers}.duckdb"),
                max_workers=workers,
            )
            wall = time.perf_counter() - t0
            rows += [
                Row(
                    "sweep",
                    f"flow, {workers} worker{'s' if workers > 1 else ''}",
                    wall,
                    "s",
                    target=f"< {TARGET_S:.0f} s",
                    ok=wall < TARGET_S,
                    note=f"{plan.sessions / wall:.1f} sessions/s, {wall / bare:.1f}× the bare loop",
                ),
            ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_report(run(parser.parse_args().quick))
