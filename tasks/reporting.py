"""The end-of-day report: DuckDB rows plus a markdown artifact in the Prefect UI.

``report_session`` is the one call a session makes, and it never raises: the run's state
reflects trading, not the report (tradeday.report_delivery).
"""

from __future__ import annotations

from logging import Logger, LoggerAdapter

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tradeday.outcome import SessionResult
from tradeday.report import ReportError, shell_command, summary_markdown_for
from tradeday.report_delivery import Delivery, deliver_report


@task(name="end-of-day-report", cache_policy=NO_CACHE)
def end_of_day_report(ledger_url: str, run_id: str, report_path: str) -> Delivery:
    return deliver_report(ledger_url, run_id, report_path)


def report_session(
    result: SessionResult,
    ledger_url: str,
    report_path: str,
    logger: Logger | LoggerAdapter,
    *,
    as_task: bool = True,
) -> Delivery:
    """Write the session's report (or defer it) and publish its summary; never raises.

    ``as_task`` runs the write as the end-of-day-report task; without it (or when the task
    run cannot be created) the same function runs directly.
    """
    delivery: Delivery | None = None
    if as_task:
        try:
            delivery = end_of_day_report(ledger_url, result.run_id, report_path)
        except Exception as exc:  # Prefect's task machinery (deliver_report never raises)
            logger.warning(
                "end-of-day-report task: %s: %s; writing without it", type(exc).__name__, exc
            )
    if delivery is None:
        delivery = deliver_report(ledger_url, result.run_id, report_path)
    if delivery.status == "written":
        logger.info(delivery.message())
    else:
        logger.warning(delivery.message())
    try:
        publish_summary(result, delivery)
    except Exception as exc:
        logger.warning("session-summary artifact not published: %s: %s", type(exc).__name__, exc)
    return delivery


def summary_markdown(result: SessionResult, delivery: Delivery) -> str:
    path = delivery.path.resolve()
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
        ("Report", delivery.message()),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"# Session {result.session_date} · {result.model}\n\n| | |\n|---|---|\n{table}\n\n"
        f"Report file (plain text, to copy):\n\n```\n{path}\n```\n\n"
        "Query it in the DuckDB shell, read-only (quit it with `.quit`: while it is open, "
        "sessions defer their reports):\n\n"
        f"```\n{shell_command(path, absolute=True)}\n```\n\n"
        f"```sql\nSELECT * FROM pnl WHERE session_id = '{result.run_id}';\n```\n\n"
        f"## Every session on {result.session_date}\n\n" + _day_table(result, delivery)
    )


def _day_table(result: SessionResult, delivery: Delivery) -> str:
    if delivery.status != "written":
        return "_Not available: the report was not written (above)._\n"
    try:
        return summary_markdown_for(delivery.path, [result.session_date], wait_s=0)
    except ReportError as exc:
        return f"_Not available: {exc}._\n"


def publish_summary(result: SessionResult, delivery: Delivery) -> None:
    create_markdown_artifact(
        key="session-summary",
        markdown=summary_markdown(result, delivery),
        description=f"{result.session_date} {result.model}: net {result.net:,.2f}",
    )
