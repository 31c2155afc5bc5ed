"""The long-running step: stream ticks through the engine until the close or a stop."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tradeday.session import TradingSession


@task(name="stream-session", cache_policy=NO_CACHE)
def stream_session(session: TradingSession) -> str:
    """Runs in the flow's main thread so a cancel's SIGTERM reaches the flow's ``finally``."""
    session.run()
    return session.engine.stop_reason
