"""Prefect events for what operators act on; automations match on their names and labels.

Emitted from the main thread at a flush (never per tick) and from recovery. Prefect's
events client sends them from a background worker, so an API outage costs no trading
time. Every event's resource is the session (``tradeday.session.<run id>``) labelled
with its deployment, model and account; inside a flow run Prefect adds the flow run,
flow and deployment as related resources.
"""

from __future__ import annotations

import logging
import time

from prefect.events import emit_event

from tradeday.session import TradingSession

STARTED = "tradeday.session.started"
FLAT = "tradeday.session.flat"
NOT_FLAT = "tradeday.session.not-flat"
KILL_SWITCH = "tradeday.session.kill-switch"
RISK_REJECTIONS = "tradeday.session.risk-rejections"
RECONNECT = "tradeday.feed.reconnect"
GAP = "tradeday.feed.gap"
RECOVERY = "tradeday.recovery.performed"
RECOVERY_FAILED = "tradeday.recovery.failed"
REJECTIONS_EVERY_S = 60.0


def resource(run_id: str, deployment: str, model: str, account: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"tradeday.session.{run_id}",
        "prefect.resource.name": run_id,
        "tradeday.deployment": deployment,
        "tradeday.model": model,
        "tradeday.account": account,
    }


def account_resource(account: str) -> dict[str, str]:
    """For what concerns a broker account rather than one session (a failed recovery)."""
    return {"prefect.resource.id": f"tradeday.account.{account}", "tradeday.account": account}


def emit(name: str, res: dict[str, str], payload: dict | None = None) -> None:
    """One event; never raises (events are a view of trading, not part of it)."""
    try:
        emit_event(name, resource=res, payload=payload or {})
    except Exception as exc:
        logging.getLogger(__name__).warning("event %s not emitted: %s", name, exc)


class SessionEvents:
    """A session observer: started, kill switch, aggregated risk rejections, reconnects and
    gaps as they happen (seen at a flush), then flat or not flat at the end."""

    def __init__(self) -> None:
        self.started = False
        self.halted = False
        self.reconnects = self.gaps = 0
        self.rejections: dict[str, int] = {}
        self.rejections_at = time.monotonic()

    def __call__(self, session: TradingSession) -> None:
        res = resource(session.run_id, session.deployment, session.model_name, session.account)
        c = session.counters()
        if not self.started:
            self.started = True
            emit(STARTED, res, {"symbols": list(session.config.symbols), "day": session.day})
        reason = session.engine.risk.halted_reason
        if reason and not self.halted:
            self.halted = True
            emit(KILL_SWITCH, res, {"reason": reason, "net": round(session.book.net(), 2)})
        if c["reconnects"] > self.reconnects:
            emit(RECONNECT, res, {"reconnects": c["reconnects"]})
            self.reconnects = c["reconnects"]
        if c["gaps"] > self.gaps:
            emit(GAP, res, {"gaps": c["gaps"], "gap_seconds": c["gap_seconds"]})
            self.gaps = c["gaps"]
        final = session.status != "running"
        if final or time.monotonic() - self.rejections_at >= REJECTIONS_EVERY_S:
            self._rejections(res, c["risk_rejections_by_limit"])
        if final:
            left = session.book.open_positions()
            payload = {"status": session.status, "message": session.message, "positions": left}
            flat = (
                not left
                and "NOT FLAT" not in session.message
                and "still has" not in session.message
            )
            if not flat:  # what the notification quotes, as for the other alerts
                payload["reason"] = session.message
            emit(FLAT if flat else NOT_FLAT, res, payload)

    def _rejections(self, res: dict[str, str], by_limit: dict[str, int]) -> None:
        """Rejections since the last one of these events, by limit: one event, not one per order."""
        self.rejections_at = time.monotonic()
        new = {k: v - self.rejections.get(k, 0) for k, v in by_limit.items()}
        new = {k: v for k, v in new.items() if v > 0}
        self.rejections = dict(by_limit)
        if new:
            emit(RISK_REJECTIONS, res, {"by_limit": new, "total": sum(new.values())})
