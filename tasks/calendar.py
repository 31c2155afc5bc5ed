"""Is the market open today, and when?"""

from __future__ import annotations

from datetime import date

from prefect import task
from prefect.cache_policies import NO_CACHE

from tradeday.calendar import MarketClosed, session_window
from tradeday.events import SessionWindow


@task(name="market-window", cache_policy=NO_CACHE)
def market_window(day: date) -> SessionWindow | MarketClosed:
    """The XNYS session for ``day``, or the :class:`MarketClosed` reason (not raised: a closed day is a normal outcome)."""
    try:
        return session_window(day)
    except MarketClosed as closed:
        return closed
