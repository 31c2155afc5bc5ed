"""``flatten-now``: close what runs left open on a broker account, on demand.

Crashed runs (process gone, or heartbeat stale on another host) are flattened from the
ledger with offsetting orders, exactly as the next session's start would do it (what
their model may hold overnight is carried, not sold). Runs still alive are left alone:
they flatten themselves when cancelled. Positions carried overnight for a model's next
session are closed only with ``include_carried``. Only a broker configured with
``owns_account`` gets its whole Alpaca account closed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.credentials import alpaca_credentials
from tasks.recovery import close_account, close_carried_positions, recover_crashed_runs
from tradeday.config import BrokerConfig, SessionConfig
from tradeday.ledger import Ledger
from tradeday.records import CarryStatus
from tradeday.wiring import account_of

DEFAULT_LEDGER_URL = SessionConfig.model_fields["ledger_url"].default
DEFAULT_REPORT_PATH = SessionConfig.model_fields["report_path"].default


@flow(name="flatten-now", flow_run_name="flatten-now-{broker.kind}")
def flatten_now(
    broker: BrokerConfig = BrokerConfig(),  # noqa: B008 - frozen pydantic default
    ledger_url: str = DEFAULT_LEDGER_URL,
    report_path: str = DEFAULT_REPORT_PATH,
    include_carried: bool = False,
) -> dict:
    """Flatten every crashed run on this broker account; close the account if it is owned.

    With ``include_carried``, also close the positions held overnight for a model's next
    session. Each flattened run is written into the DuckDB report at ``report_path``.
    """
    logger = get_run_logger()
    config = SessionConfig(broker=broker, ledger_url=ledger_url, report_path=report_path)
    credentials = alpaca_credentials() if broker.kind == "alpaca" else None
    recovered = recover_crashed_runs(
        config, credentials, by="flatten-now"
    )  # refuses alpaca without keys
    account = account_of(config, credentials)
    carried = close_carried_positions(config, credentials) if include_carried else {}
    with Ledger(ledger_url) as ledger:
        still_carried = ledger.carried(account=account, status=CarryStatus.OPEN)
    if still_carried:
        logger.info(
            "held overnight, left for their model's next session (include_carried closes them): %s",
            ", ".join(f"{c.symbol} {c.qty} ({c.model})" for c in still_carried),
        )
    closed = close_account(config, credentials) if broker.owns_account else {}
    with Ledger(ledger_url) as ledger:
        live = [r.run_id for r in ledger.unfinished_runs(broker.kind, account)]
    if live:
        logger.info("left alone (still running, cancel them to flatten): %s", ", ".join(live))
    rows = "\n".join(f"| {r['run_id']} | {r['closed'] or 'nothing'} |" for r in recovered)
    create_markdown_artifact(
        key="flatten-now",
        markdown=(
            f"# flatten-now · {account}\n\n"
            + (
                f"| crashed run | closed |\n|---|---|\n{rows}\n"
                if recovered
                else "No crashed run.\n"
            )
            + (f"\nCarried positions closed: {carried or 'none'}\n" if include_carried else "")
            + (
                f"\nHeld overnight, left for the next session: "
                f"{', '.join(f'{c.symbol} {c.qty} ({c.model})' for c in still_carried)}\n"
                if still_carried
                else ""
            )
            + (f"\nWhole account closed: {closed}\n" if broker.owns_account else "")
            + (f"\nStill running, left alone: {', '.join(live)}\n" if live else "")
        ),
        description=f"{len(recovered)} crashed run(s) flattened on {account}",
    )
    return {
        "account": account,
        "recovered": recovered,
        "carried_closed": carried,
        "still_carried": {c.carry_id: c.qty for c in still_carried},
        "account_closed": closed,
        "live": live,
    }
