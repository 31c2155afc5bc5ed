"""``flatten-now``: close what runs left open on a broker account, on demand.

Crashed runs (process gone, or heartbeat stale on another host) are flattened from the
ledger with offsetting orders, exactly as the next session's start would do it. Runs
still alive are left alone: they flatten themselves when cancelled. Only a broker
configured with ``owns_account`` gets its whole Alpaca account closed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.credentials import alpaca_credentials
from tasks.recovery import close_account, recover_crashed_runs
from tradeday.config import BrokerConfig, SessionConfig
from tradeday.ledger import Ledger
from tradeday.wiring import account_of

DEFAULT_LEDGER_URL = SessionConfig.model_fields["ledger_url"].default
DEFAULT_REPORT_PATH = SessionConfig.model_fields["report_path"].default


@flow(name="flatten-now", flow_run_name="flatten-now-{broker.kind}")
def flatten_now(
    broker: BrokerConfig = BrokerConfig(),  # noqa: B008 - frozen pydantic default
    ledger_url: str = DEFAULT_LEDGER_URL,
    report_path: str = DEFAULT_REPORT_PATH,
) -> dict:
    """Flatten every crashed run on this broker account; close the account if it is owned.

    Each flattened run is written into the DuckDB report at ``report_path``.
    """
    logger = get_run_logger()
    config = SessionConfig(broker=broker, ledger_url=ledger_url, report_path=report_path)
    credentials = alpaca_credentials() if broker.kind == "alpaca" else None
    recovered = recover_crashed_runs(
        config, credentials, by="flatten-now"
    )  # refuses alpaca without keys
    account = account_of(config, credentials)
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
            + (f"\nWhole account closed: {closed}\n" if broker.owns_account else "")
            + (f"\nStill running, left alone: {', '.join(live)}\n" if live else "")
        ),
        description=f"{len(recovered)} crashed run(s) flattened on {account}",
    )
    return {"account": account, "recovered": recovered, "account_closed": closed, "live": live}
