"""What the Prefect UI shows while a session runs: tags and a progress artifact.

Both talk to the Prefect API, so they stay off the hot path: tags once at flow start, the
progress artifact from the session's 1 s flush on the main thread, and only when the
progress moved by :data:`PROGRESS_STEP` (at most ~20 API calls a session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from tradeday.config import SessionConfig

PROGRESS_STEP = 0.05
_watchers: list[Callable[[float], None]] = []


@contextmanager
def watch_progress(callback: Callable[[float], None]) -> Iterator[None]:
    """Also send every session progress update in this process to ``callback`` (the CLI's
    terminal bar), not only the throttled artifact."""
    _watchers.append(callback)
    try:
        yield
    finally:
        _watchers.remove(callback)


def session_tags(config: SessionConfig) -> list[str]:
    return [f"model:{config.model.name}", f"feed:{config.feed.source}"]


def tag_flow_run(tags: list[str]) -> None:
    """Add tags to the current flow run: a run started from the UI with another model than
    the deployment's default must still be filterable by the model it really trades."""
    run_id = flow_run.id
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run_id)).tags
        client.update_flow_run(UUID(run_id), tags=sorted({*current, *tags}))


class SessionProgress:
    """The session's ``on_progress`` callback: a Prefect progress artifact, throttled.

    An API hiccup must never stop a trading session, so a failed update is logged once and
    later updates are skipped.
    """

    def __init__(self, description: str, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.log = logger
        self.reported = 0.0
        self.artifact_id: UUID | None = create_progress_artifact(
            progress=0.0, key="session-progress", description=description
        )

    def __call__(self, fraction: float) -> None:
        fraction = min(fraction, 1.0)
        for watcher in _watchers:
            watcher(fraction)
        if fraction - self.reported >= PROGRESS_STEP or (fraction == 1.0 and self.reported < 1.0):
            self._update(fraction)

    def done(self) -> None:
        """The session ended normally (the recording may end before the close): 100 %."""
        for watcher in _watchers:
            watcher(1.0)
        self._update(1.0)

    def _update(self, fraction: float) -> None:
        if self.artifact_id is None:
            return
        try:
            update_progress_artifact(self.artifact_id, progress=round(fraction * 100, 1))
        except Exception as exc:  # never let the UI stop the session
            self.log.warning("progress artifact update failed, not retrying: %s", exc)
            self.artifact_id = None
            return
        self.reported = fraction


def report_progress(fraction: float) -> None:
    """Send a flow's progress (0..1) to every terminal bar watching this process."""
    for watcher in _watchers:
        watcher(min(fraction, 1.0))
