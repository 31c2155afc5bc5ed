"""tradeday's Prefect deployments, defined once in ``prefect.yaml`` at the repository root.

Two ways to run them, from that one file so they cannot drift apart:

- ``tradeday serve``: :func:`runner_deployments` builds the deployments (schedules,
  parameters, tags, descriptions) and :func:`serve` runs them all from one process.
- ``prefect deploy --all`` registers the same entries on the process work pool, and
  ``prefect worker start --pool tradeday`` runs them on any number of machines
  (docs/scaling.md).

Edits made in the UI or through the API last across ``serve`` restarts: :func:`keep_edits`
keeps a deployment's server-side parameters and pause unless its ``prefect.yaml`` entry
changed since it was last applied (docs/operations.md, "Edits that last").
"""

from __future__ import annotations

import hashlib
import json
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
    return [runner_deployment(d) for d in definitions(path)]


def runner_deployment(definition: dict[str, Any]) -> RunnerDeployment:
    """One ``prefect.yaml`` entry as ``serve`` registers it; not paused unless it says so."""
    return load_flow_from_entrypoint(definition["entrypoint"]).to_deployment(
        name=definition["name"],
        description=definition.get("description"),
        tags=definition.get("tags"),
        parameters=definition.get("parameters") or {},
        schedules=schedules(definition),
        paused=definition.get("paused", False),
        enforce_parameter_schema=definition.get("enforce_parameter_schema", True),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


APPLIED_VARIABLE = "tradeday_prefect_yaml_applied"
"""The Prefect Variable holding, per deployment name, the fingerprint of the ``prefect.yaml``
entry last applied to the server: it lives with the deployments, so any machine that serves
them reads the same one."""


def fingerprint(definition: dict[str, Any]) -> str:
    """A short hash of one ``prefect.yaml`` entry (YAML anchors already resolved)."""
    canonical = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def keep_edits(
    served: list[RunnerDeployment], entries: list[dict[str, Any]]
) -> tuple[list[str], dict[str, str]]:
    """Give each of ``served`` the server's parameters, pause and schedule switches when its
    ``prefect.yaml`` entry is the one last applied (so what differs on the server is a
    user's edit); when the entry changed since, or the server has no such deployment, the
    yaml's stay.

    A kept edit the flow's current parameter schema refuses (a model renamed, say) is dropped
    for the yaml's, and said. Returns the lines to print and the fingerprints to remember
    once applied (:func:`remember_applied`).
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.schema_tools import validate
    from prefect.variables import Variable

    applied: dict[str, str] = Variable.get(APPLIED_VARIABLE, default={}) or {}
    prints: list[str] = []
    with get_client(sync_client=True) as client:
        for deployment, entry in zip(served, entries, strict=True):
            try:
                current = client.read_deployment_by_name(deployment.full_name)
            except ObjectNotFound:
                continue
            switches = [  # each yaml schedule's switch as the server has it, matched by cron
                next((c.active for c in current.schedules if c.schedule == s.schedule), s.active)
                for s in deployment.schedules
            ]
            edited = [
                what
                for what, differs in (
                    ("parameters", current.parameters != deployment.parameters),
                    ("paused", current.paused != deployment.paused),
                    ("schedule switches", switches != [s.active for s in deployment.schedules]),
                )
                if differs
            ]
            if not edited:
                continue
            if applied.get(deployment.name) != fingerprint(entry):
                prints.append(
                    f"{deployment.name}: prefect.yaml changed since last applied; "
                    f"its settings replace the server's ({', '.join(edited)})"
                )
                continue
            schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
            errors = validate(current.parameters, schema, ignore_required=True)
            if errors:
                prints.append(
                    f"{deployment.name}: the server's edited parameters no longer fit the flow "
                    f"({errors[0].message}); prefect.yaml's replace them"
                )
                continue
            deployment.parameters = current.parameters
            deployment.paused = current.paused
            for schedule, active in zip(deployment.schedules, switches, strict=True):
                schedule.active = active
            prints.append(
                f"{deployment.name}: prefect.yaml unchanged; keeping the server's edits "
                f"({', '.join(edited)})"
            )
    return prints, {d["name"]: fingerprint(d) for d in entries}


def remember_applied(fingerprints: dict[str, str]) -> None:
    """Record the entries just applied, keeping other names' (deployments served elsewhere)."""
    from prefect.variables import Variable

    applied: dict[str, str] = Variable.get(APPLIED_VARIABLE, default={}) or {}
    Variable.set(APPLIED_VARIABLE, {**applied, **fingerprints}, overwrite=True)


def serve(limit: int | None = None, path: Path = PREFECT_YAML) -> None:
    """Serve every deployment, with tradeday's automations, from this process until SIGTERM/Ctrl-C.

    ``pause_on_shutdown=False``: stopping the server process pauses no schedule the user did
    not pause; runs that come due while it is down wait as Late and start when it is back.
    """
    from prefect import serve as prefect_serve

    from deployments.automations import apply_automations

    entries = definitions(path)
    served = [runner_deployment(d) for d in entries]
    kept, fingerprints = keep_edits(served, entries)
    for line in kept:
        print(line)
    for deployment in served:  # registered first: the automations name flatten-now's id
        deployment.apply()
    remember_applied(fingerprints)
    for name in apply_automations():
        print(f"automation: {name}")
    poll = None if "PREFECT_RUNNER_POLL_FREQUENCY" in os.environ else POLL_SECONDS
    prefect_serve(*served, pause_on_shutdown=False, limit=limit, query_seconds=poll)
