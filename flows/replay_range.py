"""``replay-range``: replay consecutive recorded days for one model, in order.

Orchestration only: :func:`tradeday.replay_range.plan` checks the range before anything
runs, then each session day is a ``trading-session`` subflow run, one after the other, so
what the model holds overnight goes through the ledger from one day's run to the next
exactly as between live days. A day that does not complete stops the range: that session
ended flat (a cancel, a failure), so the days after it would not be the model's days.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from flows.session import trading_session
from tradeday import replay_range
from tradeday.config import SessionConfig


@flow(name="replay-range", flow_run_name="{config.model.name}-{first}-to-{last}")
def replay_range_flow(
    first: date,
    last: date,
    config: SessionConfig = SessionConfig(),  # noqa: B008 - frozen pydantic default
):
    """Replay every session from ``first`` to ``last`` with ``config``, carrying held positions."""
    logger = get_run_logger()
    plan = replay_range.plan(config, first, last)
    for closed in plan.closed:
        logger.info("skipping %s: market closed (%s)", closed.day.isoformat(), closed.reason)
    results: list[dict] = []
    stopped = ""
    for window in plan.days:
        state = trading_session(config=config, session_date=window.day, return_state=True)
        result = state.result(raise_on_failure=False)
        if not isinstance(result, dict) or result.get("status") != "completed":
            stopped = f"{window.day}: {state.name}: {state.message or result}"
            logger.error("stopping the range at %s", stopped)
            break
        results.append(result)
        logger.info(
            "%s %s: net %.2f, held overnight %s",
            window.day,
            result["model"],
            result["net"],
            result["carried"] or "nothing",
        )
    rows = "\n".join(
        f"| {r['session_date']} | {r['run_id']} | {r['net']:,.2f} | {r['carried'] or '-'} |"
        for r in results
    )
    skipped = "".join(f"- {c.day}: closed ({c.reason})\n" for c in plan.closed)
    create_markdown_artifact(
        key="replay-range",
        markdown=(
            f"# {config.model.name} · {first} to {last}\n\n"
            f"| day | run | net | held overnight |\n|---|---|---|---|\n{rows}\n\n{skipped}"
            + (f"\nStopped: {stopped}\n" if stopped else "")
            + "\nOvernight P&L and the multi-day summary: the `overnight_pnl` and "
            "`multi_day_summary` views of the report (docs/reports.md).\n"
        ),
        description=f"{len(results)} of {len(plan.days)} sessions replayed",
    )
    data = {
        "sessions": results,
        "closed": {c.day.isoformat(): c.reason for c in plan.closed},
        "stopped": stopped,
    }
    if stopped:
        return Failed(message=f"stopped at {stopped}", data=data)
    return Completed(message=f"{len(results)} sessions replayed", data=data)
