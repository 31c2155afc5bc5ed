"""The long-running step: stream ticks through the engine until the close or a stop."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.states import Completed, State

from tradeday.session import TradingSession


class Stop:
    """The signal that stopped the stream, handed back to the flow.

    A plain object, so Prefect passes it to the task by identity (it copies collections).
    """

    def __init__(self) -> None:
        self.signal: BaseException | None = None


@task(name="stream-session", cache_policy=NO_CACHE)
def stream_session(session: TradingSession, stop: Stop) -> str | State:
    """Runs in the flow's main thread so a cancel's SIGTERM lands here.

    The stop is caught and kept: a task that raises ``TerminationSignal`` ends Crashed,
    and one that ends in any state but Completed logs an ERROR line, although a cancel is
    a normal ending. So this task ends Completed, named "Stopped", and the flow re-raises
    the signal, where Prefect's flow engine turns a cancel into a Cancelled run.
    """
    try:
        session.run()
    except (TerminationSignal, KeyboardInterrupt) as exc:
        stop.signal = exc
        return Completed(name="Stopped", message=f"stopped by {type(exc).__name__}")
    return session.engine.stop_reason


def stream(session: TradingSession) -> str:
    """The stream-session task; re-raises its stop signal or failure in the caller."""
    stop = Stop()
    state = stream_session(session, stop, return_state=True)
    if stop.signal is not None:
        raise stop.signal
    return state.result()
