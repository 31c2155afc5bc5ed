"""Recorded market data: one Parquet format for trades, quotes and bars.

One row per event, sorted by ``ts`` (stable within equal timestamps, so the file order is
the tape order). Columns mirror Alpaca's stream fields, so the replay server can turn a
row into a wire message without lookups; fields that do not apply to a row's ``kind`` are
null. ``ts`` is integer UTC nanoseconds, like Alpaca and ``tradeday.events``. Converters
here turn the raw CSVs under ``/work/shared/data`` (see ``tradeday/recordings/README.md``)
into this format; every naive local time goes through zoneinfo, so DST is handled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tradeday.events import MINUTE_NS, NS_PER_MS, NS_PER_S, NS_PER_US, Bar, Quote, Trade

NEW_YORK = "America/New_York"
KINDS = ("t", "q", "b")
RECORDINGS_DIR = Path(__file__).parent / "recordings"
LIVE_DIR_VAR = "TRADEDAY_LIVE_RECORDINGS"
LIVE_DIR_DEFAULT = "data/recordings/live"

SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("symbol", pa.string()),
        ("kind", pa.string()),
        ("price", pa.float64()),
        ("size", pa.int64()),
        ("bid_price", pa.float64()),
        ("bid_size", pa.int64()),
        ("ask_price", pa.float64()),
        ("ask_size", pa.int64()),
        ("bid_exchange", pa.string()),
        ("ask_exchange", pa.string()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.int64()),
        ("trade_count", pa.int64()),
        ("vwap", pa.float64()),
        ("conditions", pa.list_(pa.string())),
        ("exchange", pa.string()),
        ("trade_id", pa.int64()),
        ("tape", pa.string()),
    ]
)
_NOT_NULL = ("ts", "symbol", "kind")


def conform(data: pa.Table | pd.DataFrame) -> pa.Table:
    """Cast ``data`` to ``SCHEMA`` (missing columns become null) and sort it stably by ts.

    Raises ValueError on unknown columns, null keys or unknown kinds: a recording that
    silently drops a column would replay different data than was recorded.
    """
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    unknown = set(table.column_names) - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; expected a subset of {SCHEMA.names}")
    columns = []
    for field in SCHEMA:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    table = pa.Table.from_arrays(columns, schema=SCHEMA)
    for name in _NOT_NULL:
        if table[name].null_count:
            raise ValueError(f"column {name!r} has nulls")
    bad = pc.invert(pc.is_in(table["kind"], value_set=pa.array(KINDS)))
    if pc.any(bad).as_py():
        raise ValueError(f"kind must be one of {KINDS}")
    return _sorted(table)


PLAUSIBLE_NS = (
    int(pd.Timestamp("1980-01-01", tz="UTC").value),
    int(pd.Timestamp("2100-01-01", tz="UTC").value),
)
_UNIT_MISTAKES = (("microseconds", 1_000), ("milliseconds", 1_000_000), ("seconds", 10**9))


def check_times(table: pa.Table) -> None:
    """Raise ValueError when ``ts`` is not plausible UTC nanoseconds, naming the likely unit.

    pandas 3 stores parsed datetimes in microseconds by default, so ``.astype("int64")``
    on one gives numbers 1,000 times too small: 2023 reads as January 1970.
    """
    if len(table) == 0:
        return
    low, high = (int(v.as_py()) for v in pc.min_max(table["ts"]).values())
    first, last = PLAUSIBLE_NS
    if first <= low and high < last:
        return
    seen = f"ts from {low} to {high} reads as {_ns_text(low)} to {_ns_text(high)} in nanoseconds"
    for unit, factor in _UNIT_MISTAKES:
        if first <= low * factor and high * factor < last:
            raise ValueError(
                f"{seen}; they look like epoch {unit}: multiply by {factor:,} "
                f"(from pandas: series.dt.as_unit('ns').astype('int64'))"
            )
    raise ValueError(f"{seen}; expected UTC nanoseconds between 1980 and 2100")


def _ns_text(ns: int) -> str:
    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat()


def _sorted(table: pa.Table) -> pa.Table:
    """Stable sort by ts, skipped when already sorted (the common case, and O(n) to check)."""
    ts = table["ts"].to_numpy()
    if len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return table
    return table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))


def write(data: pa.Table | pd.DataFrame, path: str | Path) -> Path:
    """Write a recording: zstd, delta-encoded timestamps, row groups small enough to skip.

    Refuses timestamps outside 1980..2100 (:func:`check_times`): a table in the wrong unit
    would otherwise replay as an empty day.
    """
    table = conform(data)
    check_times(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=19,
        use_dictionary=["symbol", "kind", "exchange", "bid_exchange", "ask_exchange", "tape"],
        column_encoding={"ts": "DELTA_BINARY_PACKED", "trade_id": "DELTA_BINARY_PACKED"},
        row_group_size=65_536,
    )
    return path


def load(
    path: str | Path,
    symbols: Iterable[str] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    kinds: Iterable[str] | None = None,
) -> pa.Table:
    """Read a recording, keeping ``start_ns <= ts < end_ns`` and the given symbols/kinds."""
    filters = []
    if symbols is not None:
        filters.append(("symbol", "in", list(symbols)))
    if kinds is not None:
        filters.append(("kind", "in", list(kinds)))
    if start_ns is not None:
        filters.append(("ts", ">=", int(start_ns)))
    if end_ns is not None:
        filters.append(("ts", "<", int(end_ns)))
    table = pq.read_table(path, schema=SCHEMA, filters=filters or None)
    return _sorted(table)


def contents(path: str | Path, start_ns: int, end_ns: int) -> dict[str, dict[str, int]]:
    """How many events of each kind each symbol has in ``start_ns <= ts < end_ns``."""
    table = pq.read_table(
        path,
        columns=["symbol", "kind"],
        filters=[("ts", ">=", int(start_ns)), ("ts", "<", int(end_ns))],
    )
    counts = table.group_by(["symbol", "kind"]).aggregate([([], "count_all")])
    held: dict[str, dict[str, int]] = {}
    for symbol, kind, n in zip(
        *(counts[c].to_pylist() for c in ("symbol", "kind", "count_all")), strict=True
    ):
        held.setdefault(symbol, {})[kind] = n
    return held


def days(path: str | Path) -> list[date]:
    """America/New_York calendar dates that have at least one event in the recording."""
    return list(_days(str(Path(path).resolve()), Path(path).stat().st_mtime_ns))


@lru_cache(maxsize=32)
def _days(path: str, _mtime_ns: int) -> tuple[date, ...]:
    ts = pq.read_table(path, columns=["ts"])["ts"].to_numpy()
    if len(ts) == 0:
        return ()
    local = pd.to_datetime(np.unique(ts // MINUTE_NS) * 60, unit="s", utc=True)
    return tuple(sorted(set(local.tz_convert(NEW_YORK).date)))


def bundled_days() -> list[date]:
    """Every America/New_York date covered by a recording shipped with tradeday."""
    return sorted({d for p in _bundled_files() for d in days(p)})


def bundled(day: date | None = None) -> Path:
    """The shipped recording holding ``day``; without a day, the default (ES trades).

    Raises LookupError listing the available days when no shipped recording has ``day``.
    """
    files = _bundled_files()
    if day is None:
        return RECORDINGS_DIR / "es-2013-09.parquet"
    for path in files:
        if day in days(path):
            return path
    have = ", ".join(d.isoformat() for d in bundled_days())
    raise LookupError(f"no bundled recording for {day.isoformat()}; bundled days: {have}")


def _bundled_files() -> list[Path]:
    return sorted(RECORDINGS_DIR.glob("*.parquet"))


def live_root() -> Path:
    """Where the hub records live days, a folder per day: ``$TRADEDAY_LIVE_RECORDINGS``, else
    ``data/recordings/live``. The hub writes there and replays read there: one setting."""
    return Path(os.environ.get(LIVE_DIR_VAR) or LIVE_DIR_DEFAULT)


def live_days() -> list[date]:
    """The days the hub recorded: each ``YYYY-MM-DD`` folder holding at least one whole part
    (parts are written under a dot-name and renamed, so a dot-file alone is not a day)."""
    root = live_root()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        if folder.is_dir() and any(folder.glob("[!.]*.parquet")):
            found.append(day)
    return sorted(found)


def recorded_days() -> list[date]:
    """Every day a session can replay without ``feed.recording``: bundled and live days."""
    return sorted(set(bundled_days()) | set(live_days()))


def recorded(day: date) -> Path:
    """The recording of ``day`` when none is configured, by one rule: the bundled recording
    holding it, else the hub's folder of that day (bundled days are history, live days new).

    Raises LookupError listing both kinds of day when neither has ``day``.
    """
    if day in bundled_days():
        return bundled(day)
    if day in live_days():
        return live_root() / day.isoformat()
    bundled_text = ", ".join(d.isoformat() for d in bundled_days())
    live_text = ", ".join(d.isoformat() for d in live_days()) or "none"
    raise LookupError(
        f"no recording for {day.isoformat()}; bundled days: {bundled_text}; "
        f"live days recorded by the hub under {live_root()} (${LIVE_DIR_VAR}): {live_text}"
    )


def localize_ns(naive: pd.Series, tz: str) -> np.ndarray:
    """UTC nanoseconds for naive local wall times in ``tz``, DST-correct.

    Spring-forward gaps do not exist on a real clock, so they raise. A fall-back hour
    happens twice: because recordings are in time order, a wall time earlier than one
    already seen is the second pass (standard time) and the rest are the first (DST).
    """
    naive = pd.to_datetime(naive).astype("datetime64[ns]")
    first_pass = ~(naive < naive.cummax()).to_numpy()
    aware = naive.dt.tz_localize(tz, ambiguous=first_pass, nonexistent="raise")
    return _utc_ns(aware)


def _utc_ns(aware: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(aware).as_unit("ns").asi8


def from_es_ticks_csv(path: str | Path, symbol: str = "ES") -> pa.Table:
    """Trades from the mlfinpy E-mini tick CSV (``DateTime`` US/Central naive ms, Price, Volume).

    ``trade_id`` is the 1-based data row number, so every print keeps a stable identity.
    """
    df = pd.read_csv(path, dtype={"Price": "float64", "Volume": "int64"})
    n = len(df)
    return conform(
        pa.table(
            {
                "ts": localize_ns(df["DateTime"], "America/Chicago"),
                "symbol": pa.array([symbol] * n, pa.string()),
                "kind": pa.array(["t"] * n, pa.string()),
                "price": df["Price"].to_numpy(),
                "size": df["Volume"].to_numpy(),
                "exchange": pa.array(["CME"] * n, pa.string()),
                "trade_id": np.arange(1, n + 1, dtype="int64"),
            }
        )
    )


def from_minute_bars_csv(path: str | Path, symbol: str) -> pa.Table:
    """1-minute bars from a pyqstrat CSV (``timestamp`` America/New_York naive, o,h,l,c,v,
    each bar labelled at its end: 09:31 .. 16:00)."""
    return from_bars_csv(path, symbol, tz=NEW_YORK, label="end", interval="1min")


TIME_COLUMNS = ("ts", "time", "timestamp", "datetime")
EPOCH_UNITS = {"s": NS_PER_S, "ms": NS_PER_MS, "us": NS_PER_US, "ns": 1}
BAR_ALIASES = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
BAR_ALIASES |= {"n": "trade_count", "vw": "vwap"}


def _read_csv(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def _times_ns(df: pd.DataFrame, path: str | Path, tz: str | None, unit: str) -> np.ndarray:
    """UTC nanoseconds from the first time column found (``TIME_COLUMNS``).

    Integers are epoch ``unit``; text with an offset is exact; text without one is wall
    time in ``tz``, and there is no silent default for it: a New York wall time read as
    UTC would shift the whole day by hours.
    """
    column = next((c for c in TIME_COLUMNS if c in df.columns), None)
    if column is None:
        raise ValueError(
            f"{path}: needs a time column named one of {', '.join(TIME_COLUMNS)}; "
            f"has {', '.join(df.columns)}"
        )
    raw = df[column]
    if pd.api.types.is_integer_dtype(raw):
        if unit not in EPOCH_UNITS:
            raise ValueError(f"unit must be one of {', '.join(EPOCH_UNITS)}, not {unit!r}")
        return raw.to_numpy("int64") * EPOCH_UNITS[unit]
    try:
        parsed = pd.to_datetime(raw, format="ISO8601")
    except ValueError:  # mixed UTC offsets: only a UTC parse can hold them
        parsed = pd.to_datetime(raw, format="ISO8601", utc=True)
    if parsed.dt.tz is not None:
        return _utc_ns(parsed)
    if tz is None:
        raise ValueError(
            f"{path}: column {column!r} has times without a UTC offset (e.g. {raw.iloc[0]!r}); "
            "say whose wall clock they are with tz= (tradeday convert --tz), "
            "e.g. America/New_York or UTC"
        )
    return localize_ns(parsed, tz)


def _symbols(df: pd.DataFrame, path: str | Path, symbol: str | None) -> pa.Array:
    if symbol is None and "symbol" not in df.columns:
        raise ValueError(f"{path}: no 'symbol' column; pass symbol= (tradeday convert --symbol)")
    values = [symbol] * len(df) if symbol is not None else df["symbol"].astype(str).tolist()
    return pa.array(values, pa.string())


def csv_kind(path: str | Path) -> Literal["trades", "bars"]:
    """Which converter a CSV's header calls for: ``price`` means trades, ``close`` bars."""
    columns = set(pd.read_csv(path, nrows=0).rename(columns=str.lower).rename(columns=BAR_ALIASES))
    if "price" in columns:
        return "trades"
    if "close" in columns:
        return "bars"
    raise ValueError(
        f"{path}: neither trades (a price and a size column) nor bars "
        f"(open, high, low, close, volume); has {', '.join(sorted(columns))}"
    )


def from_csv(
    path: str | Path, symbol: str | None = None, tz: str | None = None, unit: str = "ns"
) -> pa.Table:
    """Trades from a CSV with a time column (``ts``/``time``/``timestamp``/``datetime``),
    ``symbol``, ``price`` and ``size``.

    The time is integer epoch ``unit`` or timestamp text; text without an offset is wall
    time in ``tz`` (required then). ``symbol`` fills (or overrides) the symbol column.
    Optional columns ``exchange``, ``trade_id`` and ``tape`` are kept.
    """
    df = _read_csv(path)
    missing = {"price", "size"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: trades need columns price and size; missing {sorted(missing)}")
    n = len(df)
    columns: dict[str, object] = {
        "ts": _times_ns(df, path, tz, unit),
        "symbol": _symbols(df, path, symbol),
        "kind": pa.array(["t"] * n, pa.string()),
        "price": df["price"].to_numpy("float64"),
        "size": df["size"].to_numpy("int64"),
    }
    for name in ("exchange", "trade_id", "tape"):
        if name in df.columns:
            columns[name] = pa.array(df[name].tolist(), SCHEMA.field(name).type)
    return conform(pa.table(columns))


def from_bars_csv(
    path: str | Path,
    symbol: str | None = None,
    tz: str | None = None,
    label: Literal["start", "end"] = "start",
    interval: str = "1min",
    unit: str = "ns",
) -> pa.Table:
    """Bars from a CSV in the common layouts: a time column (``datetime``/``timestamp``/
    ``time``/``ts``), ``open, high, low, close, volume`` (or ``o, h, l, c, v``), optionally
    ``symbol``, ``trade_count``/``n`` and ``vwap``/``vw``.

    Times as in :func:`from_csv`. ``label="end"`` is for files that stamp a bar at its end
    (09:31 for the 09:30 minute): ``interval`` is subtracted, since recordings (like
    Alpaca) stamp bars at their start.
    """
    df = _read_csv(path).rename(columns=BAR_ALIASES)
    missing = {"open", "high", "low", "close", "volume"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: bars need columns open, high, low, close, volume; missing {sorted(missing)}"
        )
    if label not in ("start", "end"):
        raise ValueError(
            f"label must be 'start' or 'end' (when each bar is stamped), not {label!r}"
        )
    ts = _times_ns(df, path, tz, unit)
    if label == "end":
        ts = ts - pd.Timedelta(interval).value
    n = len(df)
    columns: dict[str, object] = {
        "ts": ts,
        "symbol": _symbols(df, path, symbol),
        "kind": pa.array(["b"] * n, pa.string()),
        **{k: df[k].to_numpy("float64") for k in ("open", "high", "low", "close")},
        "volume": df["volume"].to_numpy("int64"),
    }
    if "trade_count" in df.columns:
        columns["trade_count"] = df["trade_count"].to_numpy("int64")
    if "vwap" in df.columns:
        columns["vwap"] = df["vwap"].to_numpy("float64")
    return conform(pa.table(columns))


def events(table: pa.Table) -> Iterator[tuple[str, Trade | Quote | Bar]]:
    """A recording's rows as the event objects the feed decodes, in tape order."""
    kinds = set(table.column("kind").unique().to_pylist())
    wanted = ["kind", "symbol", "ts"]
    if "t" in kinds:
        wanted += ["price", "size", "exchange", "conditions"]
    if "q" in kinds:
        wanted += ["bid_price", "bid_size", "ask_price", "ask_size"]
    if "b" in kinds:
        wanted += ["open", "high", "low", "close", "volume", "trade_count", "vwap"]
    cols = {name: table.column(name).to_pylist() for name in wanted}
    for i, kind in enumerate(cols["kind"]):
        symbol, ts = cols["symbol"][i], cols["ts"][i]
        if kind == "t":
            conditions = cols["conditions"][i]
            yield (
                kind,
                Trade(
                    symbol,
                    ts,
                    cols["price"][i],
                    cols["size"][i],
                    cols["exchange"][i] or "",
                    tuple(conditions) if conditions else (),
                ),
            )
        elif kind == "q":
            yield (
                kind,
                Quote(
                    symbol,
                    ts,
                    cols["bid_price"][i],
                    cols["bid_size"][i],
                    cols["ask_price"][i],
                    cols["ask_size"][i],
                ),
            )
        else:
            yield (
                kind,
                Bar(
                    symbol,
                    ts,
                    cols["open"][i],
                    cols["high"][i],
                    cols["low"][i],
                    cols["close"][i],
                    cols["volume"][i],
                    cols["trade_count"][i] or 0,
                    cols["vwap"][i] or 0.0,
                ),
            )
