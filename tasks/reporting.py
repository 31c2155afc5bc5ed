"""The end-of-day report: DuckDB rows plus a markdown artifact in the Prefect UI."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tradeday.ledger import Ledger
from tradeday.outcome import SessionResult
from tradeday.report import summary_markdown_for, write_report


@task(name="end-of-day-report", cache_policy=NO_CACHE)
def end_of_day_report(ledger_url: str, run_id: str, report_path: str) -> str:
    ledger = Ledger(ledger_url)
    try:
        return str(write_report(ledger, run_id, report_path).resolve())
    finally:
        ledger.close()


def summary_markdown(result: SessionResult, report_path: str) -> str:
    rows = [
        ("Date", result.session_date),
        ("Model", result.model),
        ("Status", result.status),
        ("Ended", result.message),
        ("Ticks", f"{result.ticks:,}"),
        ("Skipped", f"{result.skipped:,}"),
        ("Reconnects", result.reconnects),
        ("Orders", f"{result.orders:,}"),
        ("Fills", f"{result.fills:,}"),
        ("Risk rejections", f"{result.risk_rejections:,}"),
        ("Final positions", result.final_positions or "flat"),
        ("Realized P&L", f"{result.realized:,.2f}"),
        ("Fees", f"{result.fees:,.2f}"),
        ("Net P&L", f"{result.net:,.2f}"),
        ("Report", f"[{Path(report_path).resolve()}](file://{Path(report_path).resolve()})"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"# Session {result.session_date} · {result.model}\n\n| | |\n|---|---|\n{table}\n\n"
        f'Query it: `duckdb {Path(report_path).resolve()} "SELECT * FROM pnl WHERE session_id = '
        f"'{result.run_id}'\"`\n\n"
        f"## Every session on {result.session_date}\n\n"
        + summary_markdown_for(report_path, [result.session_date])
    )


def publish_summary(result: SessionResult, report_path: str) -> None:
    create_markdown_artifact(
        key="session-summary",
        markdown=summary_markdown(result, report_path),
        description=f"{result.session_date} {result.model}: net {result.net:,.2f}",
    )
