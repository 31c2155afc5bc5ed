"""Alpaca stream frames to events, fast and forgiving.

One frame is a JSON array of messages. A frame of well-formed trades, quotes and bars (all
of them, nearly always) is decoded by msgspec in C straight into event objects; only the
timestamps and the per-symbol order are checked in Python. Any other frame (control
messages, bad JSON, an unknown ``T``, a missing or mistyped field) takes the slow path,
message by message, where anything malformed is counted and skipped, never raised: a bad
tick must not end a session. No pydantic here: this runs for every message.

Timestamps: a long frame whose stamps mostly differ (live SIP prints, one stamp each) is
parsed at once by numpy in :func:`frame_stamps_ns`, exact to the nanosecond; a frame that
repeats stamps (one order sweeping levels) or is short compares each stamp with the one
before and parses only the new ones, which costs less than numpy's per-call overhead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter

import msgspec
import numpy as np
import orjson

from tradeday.events import DAY_NS, NS_PER_S, Bar, Quote, Trade

Event = Trade | Quote | Bar

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
    prefix = text[:19] + "."  # the key the frame loop looks up: seconds and the fraction's dot
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


_FORM = "2013-09-03T13:30:00.083000000Z"
"""The one form Alpaca sends: UTC, nine fraction digits. Others take the exact slow path."""
_ZERO = np.frombuffer(bytes(48 if c.isdigit() else ord(c) for c in _FORM), np.uint8)
# the highest each byte may be after subtracting _ZERO: separators exactly, digits 0-9, the
# tens of month, day, hour, minute and second at most 1, 3, 2, 5 and 5
_MAX = np.frombuffer(bytes(9 if c.isdigit() else 0 for c in _FORM), np.uint8).copy()
_MAX[[5, 8, 11, 14, 17]] = [1, 3, 2, 5, 5]
# nanoseconds each digit stands for within its day: hours, minutes, seconds, the fraction
_DIGIT_NS = np.zeros(len(_FORM), np.int64)
_DIGIT_NS[[11, 12, 14, 15, 17, 18]] = [36_000, 3_600, 600, 60, 10, 1]
_DIGIT_NS *= NS_PER_S
_DIGIT_NS[20:29] = 10 ** np.arange(8, -1, -1)
_day_cache: dict[str, int] = {}
VECTOR_MIN = 40
"""Events a frame needs for the numpy parse to pay: its calls cost about 40 of the loop's
stamp parses (CPU instructions), and it is tried only when sampled neighbours all differ."""


def frame_stamps_ns(stamps: list[str]) -> list[int] | None:
    """Each ``YYYY-MM-DDTHH:MM:SS.fffffffffZ`` stamp to UTC nanoseconds, in C (numpy).

    Returns None, parsing nothing, unless every stamp has exactly that form and all share
    one date: the caller then parses them one by one, where a bad stamp is dropped alone.
    """
    n = len(stamps)
    text = "".join(stamps)
    raw = text.encode()  # a non-ASCII character makes it longer than n stamps
    width = len(_FORM)
    if len(raw) != width * n:
        return None
    digits = np.frombuffer(raw, np.uint8).reshape(n, width) - _ZERO  # uint8 wraps below 0
    if (digits > _MAX).any():
        return None
    # the form is exact, so "YYYY-MM-DDT" can only occur at the start of a stamp
    if text.count(text[:11]) != n:
        return None
    day = _day_cache.get(text[:10])
    if day is None:
        try:
            day = datetime.fromisoformat(text[:10] + "T00:00:00+00:00").timestamp()
        except ValueError:  # no such date (month 13, 31 April)
            return None
        if len(_day_cache) > 64:
            _day_cache.clear()
        _day_cache[text[:10]] = day = int(day) * NS_PER_S
    ns = (digits @ _DIGIT_NS + day).tolist()
    if max(ns) >= day + DAY_NS:  # an hour past 23
        return None
    return ns


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
    slow_frames: int = 0

    @property
    def skipped(self) -> int:
        return self.malformed_frames + self.unknown_messages + self.bad_messages + self.out_of_order


class _WireTrade(Trade, tag_field="T", tag="t"):
    ts: str  # the RFC 3339 text, until the decoder replaces it with nanoseconds


class _WireQuote(Quote, tag_field="T", tag="q"):
    ts: str


class _WireBar(Bar, tag_field="T", tag="b"):
    ts: str
    trade_count: int | None = 0  # the replay sends null when the recording has none
    vwap: float | None = 0.0


_FRAME = msgspec.json.Decoder(list[_WireTrade | _WireQuote | _WireBar])
_TS = attrgetter("ts")
_SYMBOL = attrgetter("symbol")


@dataclass
class Decoder:
    """Turns raw frames into one ``on_events`` call per frame; keeps the counters.

    One call per frame, not per event, so the engine takes its lock and looks up its
    collaborators once per frame. Events are dropped when out of order for their kind
    and symbol (a replayed or corrected print must not move tick time backwards).
    """

    on_events: Callable[[list[Event]], None]
    on_control: Callable[[dict], None]
    stats: DecodeStats = field(default_factory=DecodeStats)
    _last_ts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"t": {}, "q": {}, "b": {}}
    )  # per kind, per symbol
    _latest: int = 0  # the latest stamp of any kind and symbol seen: none is later

    def feed(self, raw: str | bytes) -> None:
        self.stats.frames += 1
        try:
            events = _FRAME.decode(raw)
        except msgspec.DecodeError:  # also ValidationError: not a frame of events alone
            self.stats.slow_frames += 1
            events = self._decode_slowly(raw)
        else:
            events = self._stamp(events)
        if events:
            self.on_events(events)

    def _stamp(self, events: list[Event]) -> list[Event]:
        """Replace each event's timestamp text by nanoseconds; drop bad and out-of-order ones."""
        if len(events) >= VECTOR_MIN:
            # a stamp its neighbour repeats in a sample of the frame: the loop parses less
            last = len(events) - 1
            if all(events[i].ts != events[i + 1].ts for i in range(0, last, last // 4)):
                ns = frame_stamps_ns(list(map(_TS, events)))
                if ns is not None:
                    if self._all_in_order(events, ns):
                        return events
                    for ev, ts in zip(events, ns, strict=True):  # parsed: the loop checks the order
                        ev.ts = ts
        return self._stamp_each(events)

    def _all_in_order(self, events: list[Event], ns: list[int]) -> bool:
        """The common frame at C speed: one kind, stamps from the latest seen on, in order.

        Then no event can be out of order for its symbol, so none is checked one by one.
        Bars are left to the loop, which also fills their nulls.
        """
        kinds = set(map(type, events))
        if ns[0] < self._latest or ns != sorted(ns) or len(kinds) != 1:
            return False
        kind = kinds.pop()
        if kind is _WireBar:
            return False
        deque(map(setattr, events, repeat("ts"), ns), maxlen=0)
        self._last_ts["t" if kind is _WireTrade else "q"].update(
            zip(map(_SYMBOL, events), ns, strict=True)
        )
        self._latest = ns[-1]
        if kind is _WireTrade:
            self.stats.trades += len(events)
        else:
            self.stats.quotes += len(events)
        return True

    def _stamp_each(self, events: list[Event]) -> list[Event]:
        """Event by event; a stamp is parsed only when it differs from the one before.

        Stamps ``_stamp`` already parsed arrive as integers and are only checked.
        """
        stats = self.stats
        seen_trade, seen_quote, seen_bar = (
            self._last_ts["t"],
            self._last_ts["q"],
            self._last_ts["b"],
        )
        trades = quotes = bars = 0
        latest = self._latest
        dropped: set[int] | None = None
        # consecutive prints often share a timestamp (one order sweeping levels): parse once
        stamp, ns = _NO_STAMP, 0
        seconds = _second_cache
        for ev in events:
            text = ev.ts
            if text != stamp:
                try:
                    if text.__class__ is int:
                        ns = text
                    else:
                        # parse_rfc3339_ns's common case inlined: a cached second, nine digits, Z
                        base = seconds.get(text[:20])
                        if base is not None and text[29:] == "Z":
                            ns = base + int(text[20:29])
                        else:
                            ns = parse_rfc3339_ns(text)
                except (ValueError, IndexError):
                    stats.bad_messages += 1
                    dropped = (dropped or set()) | {id(ev)}
                    continue
                stamp = text
                if ns > latest:
                    latest = ns
            ev.ts = ns
            cls = ev.__class__
            seen = (
                seen_trade if cls is _WireTrade else seen_quote if cls is _WireQuote else seen_bar
            )
            symbol = ev.symbol
            if ns < seen.get(symbol, 0):
                stats.out_of_order += 1
                dropped = (dropped or set()) | {id(ev)}
                continue
            seen[symbol] = ns
            if cls is _WireTrade:
                trades += 1
            elif cls is _WireQuote:
                quotes += 1
            else:
                bars += 1
                ev.trade_count = ev.trade_count or 0
                ev.vwap = ev.vwap or 0.0
        self._latest = latest
        stats.trades += trades
        stats.quotes += quotes
        stats.bars += bars
        if dropped:
            return [ev for ev in events if id(ev) not in dropped]
        return events

    def _decode_slowly(self, raw: str | bytes) -> list[Event]:
        """Message by message: control messages go to ``on_control``, bad ones are counted."""
        stats = self.stats
        try:
            messages = orjson.loads(raw)
        except orjson.JSONDecodeError:
            stats.malformed_frames += 1
            return []
        if not isinstance(messages, list):
            messages = [messages]
        last_ts = self._last_ts
        events: list[Event] = []
        for msg in messages:
            try:
                kind = msg["T"]
                if kind in ("t", "q", "b"):
                    ts = parse_rfc3339_ns(msg["t"])
                    symbol = msg["S"]
                    event = _event(kind, symbol, ts, msg)
                    if ts < last_ts[kind].get(symbol, 0):
                        stats.out_of_order += 1
                        continue
                    last_ts[kind][symbol] = ts
                    self._latest = max(self._latest, ts)
                    events.append(event)
                    if kind == "t":
                        stats.trades += 1
                    elif kind == "q":
                        stats.quotes += 1
                    else:
                        stats.bars += 1
                elif kind in ("success", "subscription", "error"):
                    stats.control += 1
                    self.on_control(msg)
                else:
                    stats.unknown_messages += 1
            except (KeyError, TypeError, ValueError, IndexError):
                stats.bad_messages += 1
        return events


def _event(kind: str, symbol: str, ts: int, msg: dict) -> Event:
    """One event from a decoded message; raises KeyError/TypeError/ValueError when malformed."""
    if not isinstance(symbol, str):
        raise TypeError(f"symbol {symbol!r} is not a string")
    if kind == "t":
        conditions = msg.get("c")
        return Trade(
            symbol,
            ts,
            float(msg["p"]),
            int(msg["s"]),
            msg.get("x") or "",
            tuple(conditions) if conditions else (),
        )
    if kind == "q":
        return Quote(symbol, ts, float(msg["bp"]), int(msg["bs"]), float(msg["ap"]), int(msg["as"]))
    return Bar(
        symbol,
        ts,
        float(msg["o"]),
        float(msg["h"]),
        float(msg["l"]),
        float(msg["c"]),
        int(msg["v"]),
        int(msg.get("n") or 0),
        float(msg.get("vw") or 0.0),
    )
