"""Bars from before the open, for models that warm up (rolling windows, averages).

Replays take them from the recording, live sessions from Alpaca's REST bars through
cpquant. Either way a failure only costs the warm-up, never the session.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from tradeday import recording
from tradeday.events import DAY_NS, Bar, SessionWindow

log = logging.getLogger(__name__)

WARMUP_DAYS = 7


def bars_from_table(table: pa.Table) -> list[Bar]:
    """The bars of a recording table, in time order, as the models receive them."""
    return [event for kind, event in recording.events(table) if kind == "b"]


def recorded(path: Path, symbols: list[str], window: SessionWindow) -> list[Bar]:
    start = window.open_ns - WARMUP_DAYS * DAY_NS
    return bars_from_table(recording.load(path, symbols, start, window.open_ns, kinds=["b"]))


def live(client: Any, symbols: list[str], window: SessionWindow, feed: str) -> list[Bar]:
    """REST bars through cpquant's AlpacaDataClient (``tradeday.record.data_client``)."""
    from tradeday.record import fetch_bars, rfc3339_seconds

    start = rfc3339_seconds(window.open_ns - WARMUP_DAYS * DAY_NS)
    end = rfc3339_seconds(window.open_ns)
    frames = [fetch_bars(client, s, start, end, feed) for s in symbols]
    frames = [f for f in frames if len(f)]
    if not frames:
        return []
    table = pa.concat_tables([recording.conform(f) for f in frames])
    return bars_from_table(recording.conform(table))
