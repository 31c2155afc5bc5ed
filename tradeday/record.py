"""Record a day of trades and minute bars from Alpaca's REST API into a replayable file.

Uses cpquant's ``AlpacaDataClient`` (its ``get_trades`` pages with Alpaca's
``next_page_token``; ``get_bars`` returns one page, so bars are fetched per symbol with
Alpaca's 10,000-row limit, far above a session's 390 minutes). The client is built with
an ``env_file`` that does not exist so nothing is ever loaded from a ``.env``; keys come
from the environment only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tradeday import recording
from tradeday.calendar import session_window
from tradeday.events import ns_to_datetime

log = logging.getLogger(__name__)

KEY_VARS = ("ALPACA_DATA_PUBLIC_KEY", "ALPACA_DATA_SECRET_KEY")
MAX_PAGES = 10_000


def rfc3339_seconds(ns: int) -> str:
    return ns_to_datetime(ns).strftime("%Y-%m-%dT%H:%M:%SZ")


def data_client(key_id: str, secret_key: str, base_url: str | None = None) -> Any:
    """cpquant's REST client with these keys; ``base_url`` points it elsewhere (tests)."""
    from cpquant.data import AlpacaDataClient

    saved = {name: os.environ.get(name) for name in KEY_VARS}
    os.environ[KEY_VARS[0]], os.environ[KEY_VARS[1]] = key_id, secret_key
    try:
        client = AlpacaDataClient(env_file=os.devnull)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if base_url:
        client.alpaca_data_url = base_url.rstrip("/") + "/v2/"
    return client


def _ns(index: pd.Index) -> pd.Series:
    return pd.Series(pd.to_datetime(index, utc=True).as_unit("ns").asi8)


def _trades(client: Any, symbol: str, start: str, end: str, feed: str) -> pd.DataFrame:
    frames = []
    token = None
    for _ in range(MAX_PAGES):
        try:
            dfs, token, _acquired = client.get_trades(
                [symbol], start=start, end=end, limit=10_000, feed=feed, page_token=token
            )
        except ValueError:  # cpquant fails to unpack its own answer to an empty page
            break
        if dfs and symbol in dfs:
            frames.append(dfs[symbol])
        if not token:
            break
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames)
    return pd.DataFrame(
        {
            "ts": _ns(df.index),
            "symbol": symbol,
            "kind": "t",
            "price": df["price"].to_numpy(dtype=float),
            "size": df["size"].to_numpy(dtype="int64"),
            "conditions": [list(c) if isinstance(c, list) else [] for c in df.get("condition", [])],
            "exchange": df["exchange_code"].astype(str).to_numpy()
            if "exchange_code" in df
            else None,
            "trade_id": df["trade_id"].to_numpy(dtype="int64") if "trade_id" in df else None,
            "tape": df["exchange"].astype(str).to_numpy() if "exchange" in df else None,
        }
    )


def fetch_bars(client: Any, symbol: str, start: str, end: str, feed: str) -> pd.DataFrame:
    """One symbol's 1-minute bars in recording columns (empty when Alpaca has none)."""
    dfs = client.get_bars([symbol], timeframe="1Min", start=start, end=end, limit=10_000, feed=feed)
    if not dfs or symbol not in dfs:
        return pd.DataFrame()
    df = dfs[symbol]
    return pd.DataFrame(
        {
            "ts": _ns(df.index),
            "symbol": symbol,
            "kind": "b",
            "open": df["open"].to_numpy(dtype=float),
            "high": df["high"].to_numpy(dtype=float),
            "low": df["low"].to_numpy(dtype=float),
            "close": df["close"].to_numpy(dtype=float),
            "volume": df["volume"].to_numpy(dtype="int64"),
            "trade_count": df["trades"].to_numpy(dtype="int64") if "trades" in df else None,
            "vwap": df["volume weighted"].to_numpy(dtype=float)
            if "volume weighted" in df
            else None,
        }
    )


def record_day(
    day: date,
    symbols: Sequence[str],
    out: str | Path,
    *,
    key_id: str,
    secret_key: str,
    feed: str = "iex",
    base_url: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[Path, dict[str, int]]:
    """Fetch the regular session's trades and minute bars and write one recording file.

    ``progress`` gets the share of symbols done after each one (the CLI's progress bar).
    """
    window = session_window(day)
    start, end = rfc3339_seconds(window.open_ns), rfc3339_seconds(window.close_ns)
    client = data_client(key_id, secret_key, base_url)
    frames: list[pd.DataFrame] = []
    counts: dict[str, int] = {}
    for done, symbol in enumerate(symbols, start=1):
        trades = _trades(client, symbol, start, end, feed)
        bars = fetch_bars(client, symbol, start, end, feed)
        counts[f"{symbol} trades"] = len(trades)
        counts[f"{symbol} bars"] = len(bars)
        frames.extend(f for f in (trades, bars) if len(f))
        log.info("recorded %s: %d trades, %d bars", symbol, len(trades), len(bars))
        if progress is not None:
            progress(done / len(symbols))
    if not frames:
        raise LookupError(f"no data for {', '.join(symbols)} on {day} (feed {feed!r})")
    table = pa.concat_tables(
        [recording.conform(f.dropna(axis=1, how="all")) for f in frames], promote_options="none"
    )
    return recording.write(table, out), counts
