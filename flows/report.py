"""``end-of-day-report``: consolidate every run of a date from the ledger into DuckDB.

Sessions write their own report rows when they end; with many workers sharing a
PostgreSQL ledger, this one flow (re)writes the whole day into one DuckDB file (DuckDB
takes one writing process at a time) and publishes the day's table as an artifact.
Re-running it replaces that day's rows.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.reporting import end_of_day_report as write_session_report
from tradeday.calendar import exchange_today
from tradeday.config import SessionConfig
from tradeday.ledger import Ledger
from tradeday.report import summary_markdown_for

DEFAULT_LEDGER_URL = SessionConfig.model_fields["ledger_url"].default
DEFAULT_REPORT_PATH = SessionConfig.model_fields["report_path"].default


@flow(name="end-of-day-report", flow_run_name="report-{session_date}")
def end_of_day_report(
    session_date: date | None = None,
    ledger_url: str = DEFAULT_LEDGER_URL,
    report_path: str = DEFAULT_REPORT_PATH,
) -> dict:
    """Write the DuckDB report for every run of ``session_date`` (default: today in New York)."""
    logger = get_run_logger()
    day = session_date or exchange_today()
    ledger = Ledger(ledger_url)
    try:
        runs = ledger.runs(day.isoformat())
    finally:
        ledger.close()
    running = [r.run_id for r in runs if r.status == "running"]
    if running:
        logger.warning("still running, reported as of their last flush: %s", ", ".join(running))
    for run in runs:
        write_session_report(ledger_url, run.run_id, report_path)
    path = str(Path(report_path).resolve())
    tables = (
        summary_markdown_for(path, [day]) if runs else "_No runs in the ledger for this date._\n"
    )
    create_markdown_artifact(
        key="end-of-day-report",
        markdown=(
            f"# End of day {day} · {len(runs)} run(s)\n\n{tables}\n"
            f"Report: [{path}](file://{path})\n\n"
            f"Query it: `duckdb {path} \"SELECT * FROM pnl WHERE session_date = '{day}'\"`\n"
        ),
        description=f"{day}: {len(runs)} run(s) in {path}",
    )
    logger.info("report for %s: %d run(s) in %s", day, len(runs), path)
    return {
        "session_date": day.isoformat(),
        "report_path": path,
        "runs": [{"run_id": r.run_id, "model": r.model, "status": r.status} for r in runs],
    }
