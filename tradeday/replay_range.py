"""Which days a multi-day replay trades, checked before any session runs.

A range replays every exchange session from ``first`` to ``last`` in order for one model,
carrying what it holds overnight through the ledger exactly as live days do (each day is
a normal session: :mod:`tradeday.session`). So the plan refuses, naming the field and the
fix, what would break that chain halfway: a feed that is not a replay, or a session day
the recording does not hold. Closed weekdays are skipped with the calendar's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from tradeday import recording
from tradeday.calendar import MarketClosed, trading_days
from tradeday.config import ConfigError, SessionConfig
from tradeday.events import SessionWindow


@dataclass(frozen=True)
class RangePlan:
    days: list[SessionWindow]
    closed: list[MarketClosed]


def plan(config: SessionConfig, first: date, last: date) -> RangePlan:
    """The sessions to replay from ``first`` to ``last`` and the weekdays closed among them."""
    if last < first:
        raise ConfigError(f"last: {last} is before first ({first}); give last >= first")
    if config.feed.source != "replay":
        raise ConfigError(
            f"config.feed.source: a range replays recorded days, not {config.feed.source!r}; "
            "set it to 'replay'"
        )
    found = trading_days(first, last)
    days = [d for d in found if isinstance(d, SessionWindow)]
    closed = [d for d in found if isinstance(d, MarketClosed)]
    if not days:
        raise ConfigError(f"first/last: no exchange session from {first} to {last}")
    if config.feed.recording is not None:
        have, where = set(recording.days(config.feed.recording)), config.feed.recording
    else:
        have, where = set(recording.recorded_days()), "the bundled and live recordings"
    missing = [d.day.isoformat() for d in days if d.day not in have]
    if missing:
        raise ConfigError(
            f"first/last: no recorded data for {', '.join(missing)} in {where}; "
            f"recorded days: {', '.join(sorted(d.isoformat() for d in have)) or 'none'}"
        )
    return RangePlan(days, closed)
