"""tradeday's Prefect deployments, defined once in ``prefect.yaml`` at the repository root.

Two ways to run them, from that one file so they cannot drift apart:

- ``tradeday serve``: :func:`runner_deployments` builds the deployments (schedules,
  parameters, tags, descriptions) and :func:`serve` runs them all from one process.
- ``prefect deploy --all`` registers the same entries on the process work pool, and
  ``prefect worker start --pool tradeday`` runs them on any number of machines
  (docs/scaling.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Schedule

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
POLL_SECONDS = 1.0
"""How often ``serve`` asks the server for runs to start. Prefect's default, 10 s, is most
of the wait between Submit in the UI and the first tick; a poll a second costs the server
one small query. ``PREFECT_RUNNER_POLL_FREQUENCY`` in the environment overrides it."""


def definitions(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of ``prefect.yaml``."""
    return yaml.safe_load(path.read_text())["deployments"]


def schedules(definition: dict[str, Any]) -> list[Schedule]:
    """Cron schedules only, each with its own timezone (a bare cron string would mean UTC)."""
    return [
        Cron(s["cron"], timezone=s["timezone"], active=s.get("active", True))
        for s in definition.get("schedules") or []
    ]


def runner_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    return [
        load_flow_from_entrypoint(d["entrypoint"]).to_deployment(
            name=d["name"],
            description=d.get("description"),
            tags=d.get("tags"),
            parameters=d.get("parameters") or {},
            schedules=schedules(d),
            enforce_parameter_schema=d.get("enforce_parameter_schema", True),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for d in definitions(path)
    ]


def serve(limit: int | None = None) -> None:
    """Serve every deployment, with tradeday's automations, from this process until SIGTERM/Ctrl-C.

    ``pause_on_shutdown=False``: stopping the server process pauses no schedule the user did
    not pause; runs that come due while it is down wait as Late and start when it is back.
    """
    from prefect import serve as prefect_serve

    from deployments.automations import apply_automations

    served = runner_deployments()
    for deployment in served:  # registered first: the automations name flatten-now's id
        deployment.apply()
    for name in apply_automations():
        print(f"automation: {name}")
    poll = None if "PREFECT_RUNNER_POLL_FREQUENCY" in os.environ else POLL_SECONDS
    prefect_serve(*served, pause_on_shutdown=False, limit=limit, query_seconds=poll)
