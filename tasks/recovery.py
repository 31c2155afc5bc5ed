"""Flatten what crashed earlier runs left open, before a new session trades."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Crashed, Failed

from tasks.events import RECOVERY, RECOVERY_FAILED, account_resource, emit, resource
from tradeday.brokers.base import AccountCloser
from tradeday.config import SessionConfig
from tradeday.ledger import Ledger
from tradeday.records import CarryStatus
from tradeday.recovery import close_carried, recover
from tradeday.report_delivery import deliver_report
from tradeday.wiring import Credentials, account_of, make_broker

FINAL_STATES = {
    "completed": Completed,
    "cancelled": Cancelled,
    "failed": Failed,
    "crashed": Crashed,
}


@task(name="recover", cache_policy=NO_CACHE)
def recover_crashed_runs(
    config: SessionConfig, credentials: Credentials | None, by: str
) -> list[dict]:
    """``by`` names who recovers (e.g. "flatten-now"), for the crashed run's message.

    Journaled rows of runs that ended with the ledger unreachable are written first
    (:func:`tradeday.recovery.recover` replays the journal).

    Each recovered run is then written into ``config.report_path``, so the DuckDB report
    shows the crashed session, its recovery fills and its P&L without waiting for the
    end-of-day report. A report that cannot be written now is deferred or logged, never
    raised (tradeday.report_delivery): the positions are already closed.
    """
    logger = get_run_logger()
    broker = make_broker(config, credentials)
    with Ledger(config.ledger_url) as ledger:
        account = account_of(config, credentials)
        try:
            try:
                done = recover(ledger, broker, account, by=by)
            except Exception as exc:
                emit(
                    RECOVERY_FAILED,
                    account_resource(account),
                    {"by": by, "reason": f"{type(exc).__name__}: {exc}"},
                )
                raise
            confirmed = close_carried(ledger, broker, account, by=by, queued_only=True)
            if confirmed:
                logger.warning("closes queued for the open have filled: %s", confirmed)
            for rec in done:
                logger.warning(
                    "recovered crashed run %s: closed %s", rec.run_id, rec.closed or "nothing"
                )
                run = ledger.run(rec.run_id)
                if run is not None:
                    emit(
                        RECOVERY,
                        resource(rec.run_id, run.deployment, run.model, run.account),
                        {"by": by, "closed": rec.closed, "fills": rec.fills, "left": rec.left},
                    )
                if run is not None and run.flow_run_id:
                    mark_flow_run_crashed(run.flow_run_id, run.message)
                delivery = deliver_report(config.ledger_url, rec.run_id, config.report_path)
                logger.info("crashed run %s: %s", rec.run_id, delivery.message())
        finally:
            broker.close()
        reconciled = reconcile_flow_runs(ledger)
    if reconciled:
        logger.info("%d finished run(s) had their Prefect state set from the ledger", reconciled)
    if not done:
        logger.info("no crashed runs to recover")
    return [{"run_id": r.run_id, "closed": r.closed, "fills": r.fills} for r in done]


def mark_flow_run_crashed(flow_run_id: str, message: str) -> None:
    """A killed run's flow run stays Running in Prefect: end it Crashed, with recovery's words."""
    set_final_state(flow_run_id, "crashed", message)


def reconcile_flow_runs(ledger: Ledger, days: int = 3) -> int:
    """Runs the ledger has finished whose flow run is still Running or Pending (the API was
    down when the session ended) get the ledger's status as their Prefect state; how many."""
    since = time.time_ns() - days * 86_400 * 10**9
    done = 0
    for run in ledger.runs():
        if run.flow_run_id and run.status in FINAL_STATES and (run.ended_ns or 0) >= since:
            done += set_final_state(run.flow_run_id, run.status, run.message)
    return done


def set_final_state(flow_run_id: str, status: str, message: str) -> bool:
    """Set a ledger status (completed, cancelled, failed, crashed) as the flow run's state.

    Only a run still Running or Pending is touched, so a state set meanwhile (a cancel, a
    late Completed) stands. Prefect is not on the trading path: failing to reach it is
    logged, never raised.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state is None or state.type not in (StateType.RUNNING, StateType.PENDING):
                return False
            new = FINAL_STATES[status](message=message[:500])
            client.set_flow_run_state(UUID(flow_run_id), new, force=True)
            logger.info("flow run %s marked %s from the ledger", flow_run_id, new.name)
            return True
    except Exception as exc:  # the API down, the run deleted: the ledger already says it
        logger.warning(
            "flow run %s not marked %s: %s: %s", flow_run_id, status, type(exc).__name__, exc
        )
        return False


@task(name="close-carried", cache_policy=NO_CACHE)
def close_carried_positions(
    config: SessionConfig, credentials: Credentials | None
) -> dict[str, int]:
    """Close the positions held overnight on this account (``flatten-now --include-carried``),
    and rewrite the report of each run that carried one."""
    logger = get_run_logger()
    broker = make_broker(config, credentials)
    with Ledger(config.ledger_url) as ledger:
        account = account_of(config, credentials)
        runs = {c.from_run_id for c in ledger.carried(account=account, status=CarryStatus.OPEN)}
        try:
            closed = close_carried(ledger, broker, account, by="flatten-now --include-carried")
        finally:
            broker.close()
    for run_id in sorted(runs):
        delivery = deliver_report(config.ledger_url, run_id, config.report_path)
        logger.info("run %s: %s", run_id, delivery.message())
    logger.warning("closed positions held overnight: %s", closed or "none were held")
    return closed


@task(name="close-account", cache_policy=NO_CACHE)
def close_account(config: SessionConfig, credentials: Credentials | None) -> dict[str, int]:
    """Close every position in an Alpaca account that the config says tradeday owns."""
    logger = get_run_logger()
    broker = make_broker(config, credentials)
    try:
        if not isinstance(broker, AccountCloser):
            raise ValueError(f"the {broker.name} broker cannot close a whole account")
        broker.start()
        statuses = broker.close_all_positions()
        left = broker.wait_until_flat(timeout=30.0)
    finally:
        broker.close()
    if not left.flat:
        raise RuntimeError(f"account not flat after close-all: {left}")
    logger.warning("closed the whole account: %s", statuses or "nothing was open")
    return statuses
