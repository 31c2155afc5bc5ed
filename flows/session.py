"""The daily trading session: calendar, recovery, streaming, flatten, report.

Orchestration only. The flatten lives in this flow's own ``finally`` (not an
``on_cancellation`` hook, which runs in another process after this one is gone), so a
cancel from the UI, a SIGTERM, the close and the end of a recording all end flat.
"""

from datetime import date

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

from tasks.calendar import market_window
from tasks.credentials import alpaca_credentials
from tasks.events import SessionEvents
from tasks.live_view import LiveView
from tasks.recovery import recover_crashed_runs
from tasks.reporting import report_session
from tasks.streaming import stream
from tasks.ui import SessionProgress, session_tags, tag_flow_run
from tradeday.calendar import MarketClosed, exchange_today
from tradeday.config import SessionConfig
from tradeday.report_delivery import check_writable
from tradeday.session import TradingSession
from tradeday.wiring import needs_credentials


class SessionFailed(Exception):
    """A session that ended "failed" after trading (not flat, an owned account left open):
    the flow run's Failed state carries it, so a Python caller of the flow gets this error
    and a caller with ``return_state=True`` still finds the session's figures in ``result``."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[type["SessionFailed"], tuple[str, dict]]:
        return SessionFailed, (str(self), self.result)  # results may be persisted (pickled)


def session_result(state: State) -> dict | None:
    """The figures a finished session returned, whether its run Completed or Failed."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, SessionFailed):
        return data.result
    return data if isinstance(data, dict) else None


def _run_name() -> str:
    params = flow_run.parameters
    day = params.get("session_date") or exchange_today()
    config = params.get("config")
    model = (
        config.model.name
        if isinstance(config, SessionConfig)
        else (config or {}).get("model", {}).get("name", "default")
    )
    return f"{day}-{model}"


@flow(name="trading-session", flow_run_name=_run_name, log_prints=False)
def trading_session(config: SessionConfig = SessionConfig(), session_date: date | None = None):  # noqa: B008
    """Trade one NYSE session with the configured model, end flat, and write the report."""
    logger = get_run_logger()
    tag_flow_run(session_tags(config))
    day = session_date or exchange_today()
    window = market_window(day)
    if isinstance(window, MarketClosed):
        logger.info("%s: nothing to do", window)
        return Completed(message=str(window), data={"status": "closed", "reason": window.reason})
    credentials = alpaca_credentials() if needs_credentials(config) else None
    check_writable(config.report_path)
    recover_crashed_runs(config, credentials, by=f"the {day} {config.model.name} session's start")
    progress = SessionProgress(f"{day} {config.model.name}: share of the session done", logger)
    session = TradingSession(
        config,
        window,
        credentials=credentials,
        logger=logger,
        flow_run_id=str(flow_run.id or ""),
        deployment=deployment.name or "",
        on_progress=progress,
        observers=[LiveView(logger), SessionEvents()],
    )
    status, message = "completed", ""
    try:
        stream(session)
    except (TerminationSignal, KeyboardInterrupt) as exc:
        status, message = "cancelled", f"stopped by {type(exc).__name__}"
        raise
    except BaseException as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result = session.shutdown(status, message)
        session.close()
        # every ending publishes its summary; a stopped run writes its report without a
        # new task run (the cancel's grace period is short, the API may be what failed)
        delivery = report_session(
            result, config.ledger_url, config.report_path, logger, as_task=status == "completed"
        )
    progress.done()
    data = {
        **result.as_dict(),
        "report_path": str(delivery.path.resolve()),
        "report": delivery.message(),
    }
    message = f"{result.message}; {delivery.message()}"
    if result.status == "failed":  # traded, then could not end clean: not a success
        return Failed(message=message, data=SessionFailed(message, data))
    return Completed(message=message, data=data)
