"""tradeday's automations, as code: created next to the deployments, by name, idempotently.

- a trading-session run that ends Crashed runs ``flatten-now`` with that run's broker,
  ledger and report (templated from the crashed flow run's parameters);
- a kill switch, a session that ends not flat, or a failed recovery notifies;
- a ``daily-session`` run not finished 15 minutes after a regular close notifies.

Notifications go through the Prefect notification block named by
``TRADEDAY_NOTIFY_BLOCK`` (``<block-type-slug>/<name>``, e.g.
``custom-webhook/tradeday-alerts``, ``slack-webhook/ops``); without it only the flatten
automation is created (docs/operations.md).
"""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from flows.maintenance import DEFAULT_LEDGER_URL, DEFAULT_REPORT_PATH
from tasks.events import KILL_SWITCH, NOT_FLAT, RECOVERY_FAILED

NOTIFY_BLOCK_ENV = "TRADEDAY_NOTIFY_BLOCK"
CRASHED_FLATTEN = "tradeday: crashed session runs flatten-now"
ALERT = "tradeday: kill switch, not flat or failed recovery notifies"
LATE = "tradeday: daily session not finished 15 min after the close notifies"
# 09:25 start to 16:00 close, plus 15 minutes (an early close only makes this later)
LATE_AFTER = timedelta(hours=6, minutes=50)
SESSION_FLOW = {"prefect.resource.role": "flow", "prefect.resource.name": "trading-session"}
ENDED = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}


def _from_crashed_run(field: str, default: str) -> str:
    return f"{{{{ flow_run.parameters.config.{field} | default({default!r}) }}}}"


def flatten_on_crash(flatten_now_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=CRASHED_FLATTEN,
        description="A crashed session's flow process is gone: close what it left open.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=SESSION_FLOW,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=flatten_now_id,
                parameters={
                    "broker": "{{ flow_run.parameters.config.broker | default({}) }}",
                    "ledger_url": _from_crashed_run("ledger_url", DEFAULT_LEDGER_URL),
                    "report_path": _from_crashed_run("report_path", DEFAULT_REPORT_PATH),
                },
            )
        ],
    )


def _label(name: str) -> str:
    """A resource label in a notification; "-" where the event has none (an account's)."""
    return f"{{{{ event.resource['tradeday.{name}'] | default('-') }}}}"


# every alert event carries a "reason": the kill switch's, the session's end, the error
ALERT_BODY = (
    f"{{{{ event.event }}}}: deployment {_label('deployment')}, model {_label('model')}, "
    f"account {_label('account')}, run "
    "{{ event.resource['prefect.resource.name'] | default('-') }}. "
    "Reason: {{ event.payload.reason }}"
)


def alerts(block_id: UUID) -> list[AutomationCore]:
    alert = AutomationCore(
        name=ALERT,
        description="What an operator must look at today.",
        trigger=EventTrigger(
            expect={KILL_SWITCH, NOT_FLAT, RECOVERY_FAILED},
            match={"prefect.resource.id": ["tradeday.session.*", "tradeday.account.*"]},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject=f"{{{{ event.event }}}}: {_label('deployment')} {_label('model')}",
                body=ALERT_BODY,
            )
        ],
    )
    late = AutomationCore(
        name=LATE,
        description="The daily session should have flattened and ended by 16:15 New York.",
        trigger=EventTrigger(
            after={"prefect.flow-run.Running"},
            expect=ENDED,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.name": "daily-session",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=LATE_AFTER,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="tradeday: daily session still running after the close",
                body="Flow run {{ event.resource.id }} has not finished 15 minutes after the close.",
            )
        ],
    )
    return [alert, late]


def notify_block_id(name: str) -> UUID:
    """The block document of ``<type-slug>/<name>``; a clear error when it does not exist."""
    try:
        block = Block.load(name)
    except (ValueError, KeyError) as exc:
        raise SystemExit(
            f"{NOTIFY_BLOCK_ENV}={name!r}: no such notification block; create it in the UI "
            "(Blocks > +) or with Python, and name it as <block-type-slug>/<name>"
        ) from exc
    assert block._block_document_id is not None
    return block._block_document_id


def apply_automations() -> list[str]:
    """Create (or replace, by name) tradeday's automations; the names created.

    Needs the ``flatten-now`` deployment registered first.
    """
    block = os.environ.get(NOTIFY_BLOCK_ENV)
    with get_client(sync_client=True) as client:
        flatten_now_id = client.read_deployment_by_name("flatten-now/flatten-now").id
        wanted = [flatten_on_crash(flatten_now_id)]
        if block:
            wanted += alerts(notify_block_id(block))
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            client.create_automation(automation)
    return [a.name for a in wanted]
