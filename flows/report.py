"""``end-of-day-report``: consolidate every run of a date from the ledger into DuckDB.

Sessions write their own report rows when they end; with many workers sharing a
PostgreSQL ledger, this one flow (re)writes every run of the day into one DuckDB file
(DuckDB takes one writing process at a time) and publishes the day's table as an artifact.
Re-running it rewrites those runs in place. A file held by a reader defers the writes
(tradeday.report_delivery); a run that cannot be written fails this flow, naming why.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from tasks.reporting import end_of_day_report as write_session_report
from tradeday.calendar import exchange_today
from tradeday.config import SessionConfig
from tradeday.journal import replay_journal
from tradeday.ledger import Ledger
from tradeday.report import ReportError, shell_command, summary_markdown_for

DEFAULT_LEDGER_URL = SessionConfig.model_fields["ledger_url"].default
DEFAULT_REPORT_PATH = SessionConfig.model_fields["report_path"].default


@flow(name="end-of-day-report", flow_run_name="report-{session_date}")
def end_of_day_report(
    session_date: date | None = None,
    ledger_url: str = DEFAULT_LEDGER_URL,
    report_path: str = DEFAULT_REPORT_PATH,
):
    """Write the DuckDB report for every run of ``session_date`` (default: today in New York)."""
    logger = get_run_logger()
    day = session_date or exchange_today()
    with Ledger(ledger_url) as ledger:
        replayed = replay_journal(ledger)  # rows sessions could not write before they ended
        runs = ledger.runs(day.isoformat())
    if replayed:
        logger.warning("wrote %d journaled batches into the ledger first", replayed)
    running = [r.run_id for r in runs if r.status == "running"]
    if running:
        logger.warning("still running, reported as of their last flush: %s", ", ".join(running))
    deliveries = [write_session_report(ledger_url, run.run_id, report_path) for run in runs]
    problems = sorted({d.message() for d in deliveries if d.status != "written"})
    for problem in problems:
        logger.warning(problem)
    path = Path(report_path).resolve()
    try:
        tables = (
            summary_markdown_for(path, [day], wait_s=0)
            if runs
            else "_No runs in the ledger for this date._\n"
        )
    except ReportError as exc:
        tables = f"_Not available: {exc}._\n"
    create_markdown_artifact(
        key="end-of-day-report",
        markdown=(
            f"# End of day {day} · {len(runs)} run(s)\n\n{tables}\n"
            + "".join(f"- {p}\n" for p in problems)
            + f"\nReport file (plain text, to copy):\n\n```\n{path}\n```\n\n"
            f"Query it in the DuckDB shell, read-only:\n\n```\n"
            f"{shell_command(path, absolute=True)}\n```\n\n"
            f"```sql\nSELECT * FROM daily_summary WHERE session_date = '{day}';\n```\n"
        ),
        description=f"{day}: {len(runs)} run(s) in {path}",
    )
    logger.info("report for %s: %d run(s) in %s", day, len(runs), path)
    data = {
        "session_date": day.isoformat(),
        "report_path": str(path),
        "runs": [
            {"run_id": r.run_id, "model": r.model, "status": r.status, "report": d.status}
            for r, d in zip(runs, deliveries, strict=True)
        ],
    }
    if any(d.status == "failed" for d in deliveries):
        return Failed(message="; ".join(problems), data=data)
    return Completed(message="; ".join(problems) or f"{len(runs)} run(s) written", data=data)
