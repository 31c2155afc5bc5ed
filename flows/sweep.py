"""``sweep``: days × models × parameter grids as one flow, one task run per combination.

Orchestration only: tradeday.sweep plans and validates the whole sweep before any task
exists (a bad value fails the flow naming its field, and nothing runs), each combination
trades its days on the backtest path in its own task run, up to ``max_workers`` at once
on a process pool (backtests are CPU-bound: threads would share one core), and every
finished combination goes into the DuckDB report in its own transaction as soon as it
is done. A progress artifact counts combinations; a comparison artifact ends the run. A
cancelled or failed sweep keeps its finished combinations and is marked so (docs/research.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner

from tasks.ui import report_progress
from tradeday import sweep as sweeps
from tradeday import sweep_report
from tradeday.config import SessionConfig
from tradeday.events import SessionWindow

DEFAULT_REPORT_PATH = SessionConfig.model_fields["report_path"].default


@task(name="sweep-combination", task_run_name="{label}")
def run_combination(
    combination: sweeps.Combination,
    days: Sequence[SessionWindow],
    label: str,
    path: sweeps.SweepPath = "backtest",
) -> list[sweeps.DayResult]:
    """One combination over every day of the sweep."""
    return sweeps.run_combination(combination, days, path)


@flow(name="sweep", log_prints=False)
def sweep(
    symbols: list[str],
    models: str | list[str] = "all",
    start: date | None = None,
    end: date | None = None,
    dates: list[date] | None = None,
    grid: dict[str, dict[str, list[Any]]] | None = None,
    report_path: str = DEFAULT_REPORT_PATH,
    max_workers: int = 2,
    sweep_id: str | None = None,
    path: sweeps.SweepPath = "backtest",
) -> str:
    """Run every combination of ``models`` and their ``grid`` over the days; the sweep id.

    ``grid`` is ``{model: {field: [values]}}``; days are ``start``..``end`` or ``dates``.
    ``path`` is ``backtest`` (no feed, the default) or ``faithful`` (each session through
    the embedded replay server and cpquant's client, as the daily flow runs it).
    """
    logger = get_run_logger()
    plan = sweeps.plan(
        models_=models,
        symbols=symbols,
        start=start,
        end=end,
        dates=dates,
        grids=grid,
        sweep_id=sweep_id,
        path=path,
    )
    for closed in plan.closed:
        logger.info("skipping %s: market closed (%s)", closed.day.isoformat(), closed.reason)
    logger.info(
        "sweep %s: %d combinations × %d days = %d sessions on the %s path, %d at a time",
        plan.sweep_id,
        len(plan.combinations),
        len(plan.days),
        plan.sessions,
        plan.path,
        max_workers,
    )
    sweep_report.start_sweep(report_path, plan)
    progress = create_progress_artifact(0.0, key=f"sweep-{plan.sweep_id}-progress")
    status = "failed"
    try:
        runner = ProcessPoolTaskRunner(max_workers=max_workers)
        with runner:
            pending = [
                runner.submit(
                    run_combination,
                    parameters={
                        "combination": c,
                        "days": plan.days,
                        "label": c.label,
                        "path": plan.path,
                    },
                )
                for c in plan.combinations
            ]
            for done, future in enumerate(as_completed(pending), start=1):
                results = future.result()
                sweep_report.write_combination(report_path, plan.sweep_id, results)
                update_progress_artifact(progress, 100.0 * done / len(pending))
                report_progress(done / len(pending))
                logger.info(
                    "%d/%d done: %s net %.2f",
                    done,
                    len(pending),
                    results[0].model,
                    sum(r.net for r in results),
                )
        status = "completed"
    except (TerminationSignal, KeyboardInterrupt, SystemExit):
        status = "cancelled"
        raise
    finally:
        sweep_report.finish_sweep(report_path, plan.sweep_id, status)
        create_markdown_artifact(
            sweep_report.sweep_markdown(report_path, plan.sweep_id),
            key=f"sweep-{plan.sweep_id}",
            description=f"Sweep {plan.sweep_id}: models and parameter sets compared",
        )
    return plan.sweep_id
