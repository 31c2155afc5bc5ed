"""Alpaca stream frames to events, fast and forgiving.

One frame is a JSON array of messages. Anything malformed (bad JSON, unknown ``T``,
missing fields) is counted and skipped, never raised: a bad tick must not end a session.
No pydantic here: this runs for every message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from tradeday.events import NS_PER_S, Bar, Quote, Trade

_second_cache: dict[str, int] = {}
_NO_STAMP = object()


def parse_rfc3339_ns(text: str) -> int:
    """``2013-09-03T13:30:00.083000000Z`` to UTC nanoseconds.

    The date-to-seconds prefix repeats for every message of a second, so it is parsed
    once and cached; the fraction is integer arithmetic, shortest for the nine digits
    Alpaca and the replay send. Alpaca always sends UTC (``Z``); other offsets take the
    exact slow path.
    """
    if text[-1] != "Z":
        return _parse_with_offset(text)
    prefix = text[:19]
    base = _second_cache.get(prefix)
    if base is None:
        base = int(datetime.fromisoformat(text[:16] + ":00+00:00").timestamp()) * NS_PER_S
        base += int(text[17:19]) * NS_PER_S
        if len(_second_cache) > 4096:
            _second_cache.clear()
        _second_cache[prefix] = base
    if len(text) == 30 and text[19] == ".":
        return base + int(text[20:29])
    nanos = 0
    if len(text) > 21 and text[19] == ".":
        frac = text[20:-1][:9]
        nanos = int(frac) * 10 ** (9 - len(frac))
    return base + nanos


def _parse_with_offset(text: str) -> int:
    head, dot, rest = text.partition(".")
    digits = ""
    while rest[len(digits) : len(digits) + 1].isdigit():
        digits = rest[: len(digits) + 1]
    offset = rest[len(digits) :] if dot else head[19:]
    dt = datetime.fromisoformat(head[:19] + (offset or "+00:00")).astimezone(UTC)
    nanos = int(digits[:9].ljust(9, "0")) if digits else 0
    return int(dt.timestamp()) * NS_PER_S + nanos


@dataclass
class DecodeStats:
    """Counters that reach the heartbeat log and the report."""

    frames: int = 0
    trades: int = 0
    quotes: int = 0
    bars: int = 0
    malformed_frames: int = 0
    unknown_messages: int = 0
    bad_messages: int = 0
    out_of_order: int = 0
    control: int = 0

    @property
    def skipped(self) -> int:
        return self.malformed_frames + self.unknown_messages + self.bad_messages + self.out_of_order


@dataclass
class Decoder:
    """Turns raw frames into calls on the sinks; keeps the counters and per-symbol last time."""

    on_trade: Callable[[Trade], None]
    on_quote: Callable[[Quote], None]
    on_bar: Callable[[Bar], None]
    on_control: Callable[[dict], None]
    stats: DecodeStats = field(default_factory=DecodeStats)
    _last_ts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"t": {}, "q": {}, "b": {}}
    )  # per kind, per symbol

    def feed(self, raw: str | bytes) -> None:
        stats = self.stats
        stats.frames += 1
        try:
            messages = orjson.loads(raw)
        except orjson.JSONDecodeError:
            stats.malformed_frames += 1
            return
        if not isinstance(messages, list):
            messages = [messages]
        last_ts = self._last_ts
        last_trade = last_ts["t"]
        on_trade = self.on_trade
        # consecutive prints often share a timestamp (one order sweeping levels): parse once
        stamp, stamp_ns = _NO_STAMP, 0
        for msg in messages:
            try:
                kind = msg["T"]
                if kind == "t":
                    if msg["t"] != stamp:
                        stamp_ns = parse_rfc3339_ns(msg["t"])
                        stamp = msg["t"]
                    ts = stamp_ns
                    symbol = msg["S"]
                    if ts < last_trade.get(symbol, 0):
                        stats.out_of_order += 1
                        continue
                    last_trade[symbol] = ts
                    conditions = msg.get("c")
                    trade = Trade(
                        symbol,
                        ts,
                        float(msg["p"]),
                        int(msg["s"]),
                        msg.get("x", ""),
                        tuple(conditions) if conditions else (),
                    )
                    stats.trades += 1
                    on_trade(trade)
                elif kind == "q":
                    if msg["t"] != stamp:
                        stamp_ns = parse_rfc3339_ns(msg["t"])
                        stamp = msg["t"]
                    ts = stamp_ns
                    symbol = msg["S"]
                    if ts < last_ts["q"].get(symbol, 0):
                        stats.out_of_order += 1
                        continue
                    last_ts["q"][symbol] = ts
                    quote = Quote(
                        msg["S"],
                        ts,
                        float(msg["bp"]),
                        int(msg["bs"]),
                        float(msg["ap"]),
                        int(msg["as"]),
                    )
                    stats.quotes += 1
                    self.on_quote(quote)
                elif kind == "b":
                    ts = parse_rfc3339_ns(msg["t"])
                    symbol = msg["S"]
                    if ts < last_ts["b"].get(symbol, 0):
                        stats.out_of_order += 1
                        continue
                    last_ts["b"][symbol] = ts
                    bar = Bar(
                        msg["S"],
                        ts,
                        float(msg["o"]),
                        float(msg["h"]),
                        float(msg["l"]),
                        float(msg["c"]),
                        int(msg["v"]),
                        int(msg.get("n") or 0),  # the replay sends null when not recorded
                        float(msg.get("vw") or 0.0),
                    )
                    stats.bars += 1
                    self.on_bar(bar)
                elif kind in ("success", "subscription", "error"):
                    stats.control += 1
                    self.on_control(msg)
                else:
                    stats.unknown_messages += 1
            except (KeyError, TypeError, ValueError, IndexError):
                stats.bad_messages += 1
