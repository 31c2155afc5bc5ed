"""The decoder: the C fast path and the message-by-message slow path give the same events.

Frames are the replay server's own bytes for real recorded data (ES trades, 1-minute bars),
compared against ``recording.events``, the independent row-to-event converter.
"""

from __future__ import annotations

from datetime import date, datetime

import orjson
import pytest

from tests.conftest import OPEN_FIXTURE
from tradeday import recording
from tradeday.decode import VECTOR_MIN, Decoder, Event, frame_stamps_ns
from tradeday.events import NS_PER_S, Bar, Quote, Trade, datetime_to_ns
from tradeday.replay.wire import Block, Format, join


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls = 0
        self.controls: list[dict] = []

    def decoder(self) -> Decoder:
        return Decoder(self.on_events, self.controls.append)

    def on_events(self, events: list[Event]) -> None:
        self.calls += 1
        self.events += events


def fields(event: Event) -> tuple:
    kind = next(c for c in type(event).__mro__ if c in (Trade, Quote, Bar))
    return (kind.__name__, *(getattr(event, f) for f in event.__struct_fields__))


def served_frames(table, per_frame: int) -> list[bytes]:
    items = Block(table, 0, len(table)).encoded(Format.JSON)
    return [join(items[i : i + per_frame], Format.JSON) for i in range(0, len(items), per_frame)]


@pytest.fixture(scope="module")
def real_tables():
    bars = recording.load(recording.bundled(date(2023, 1, 9)), kinds=["b"])
    return [recording.load(OPEN_FIXTURE, kinds=["t"]), bars]


@pytest.mark.parametrize("per_frame", [1, 7, 100])
def test_fast_path_gives_the_recorded_events(real_tables, per_frame: int) -> None:
    for table in real_tables:
        expected = [fields(e) for _, e in recording.events(table)]
        sink = Sink()
        decoder = sink.decoder()
        frames = served_frames(table, per_frame)
        for raw in frames:
            decoder.feed(raw.decode())
        assert decoder.stats.slow_frames == 0
        assert sink.calls == len(frames)
        assert [fields(e) for e in sink.events] == expected
        assert all(type(e.ts) is int for e in sink.events)
        assert decoder.stats.trades + decoder.stats.bars == len(expected)
        assert decoder.stats.skipped == 0


def test_slow_path_gives_the_same_events(real_tables) -> None:
    """A control message in every frame sends each one down the slow path."""
    for table in real_tables:
        expected = [fields(e) for _, e in recording.events(table)]
        sink = Sink()
        decoder = sink.decoder()
        frames = served_frames(table, 100)
        for raw in frames:
            decoder.feed(raw[:-1] + b',{"T":"success","msg":"authenticated"}]')
        assert decoder.stats.slow_frames == len(frames)
        assert len(sink.controls) == decoder.stats.control == len(frames)
        assert [fields(e) for e in sink.events] == expected
        assert decoder.stats.skipped == 0


T0 = "2013-09-03T13:30:00.040000000Z"
T1 = "2013-09-03T13:30:01.000000000Z"
T2 = "2013-09-03T13:30:02.500000000Z"


def trade(ts: str, size: int, symbol: str = "ES", **kw) -> dict:
    return {
        "T": "t",
        "S": symbol,
        "i": 1,
        "x": "CME",
        "p": 1646.5,
        "s": size,
        "c": [],
        "t": ts,
    } | kw


def test_fast_path_drops_bad_stamps_and_out_of_order_prints() -> None:
    frame = [
        trade(T1, 1),
        trade("yesterday", 2),
        trade(T0, 3),  # earlier than ES's last: out of order
        trade(T0, 4, symbol="NQ"),  # earlier, but another symbol's first
        trade(T2, 5),
    ]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps(frame))
    stats = decoder.stats
    assert stats.slow_frames == 0
    assert (stats.trades, stats.bad_messages, stats.out_of_order) == (3, 1, 1)
    assert [(e.symbol, e.size, e.ts) for e in sink.events] == [
        ("ES", 1, 1_378_215_001_000_000_000),
        ("NQ", 4, 1_378_215_000_040_000_000),
        ("ES", 5, 1_378_215_002_500_000_000),
    ]


def test_slow_path_counts_each_kind_of_bad_message_once() -> None:
    frame = [
        {"T": "success", "msg": "authenticated"},
        trade(T0, 1),
        {"T": "q", "S": "ES", "bp": 1646.25, "bs": 3, "ap": 1646.5, "as": 9, "t": T0},
        {"T": "b", "S": "ES", "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "n": None, "t": T0},
        {"T": "x", "S": "ES", "t": T1},  # unknown type
        {k: v for k, v in trade(T1, 2).items() if k != "p"},  # no price
        trade(T1, "many"),  # size not a number
        trade(T0, 3, x=None, c=None),  # nulls Alpaca never sends: still a good print
        trade(T0, 4, symbol="QQQ") | {"t": T2[:-1] + "+00:00"},  # an explicit offset
        "not a message",
    ]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps(frame))
    decoder.feed(b"[{not json")
    decoder.feed(orjson.dumps(trade(T1, 5)))  # one message, not in an array
    stats = decoder.stats
    assert stats.slow_frames == 3
    assert stats.control == 1 and sink.controls == [frame[0]]
    assert (stats.trades, stats.quotes, stats.bars) == (4, 1, 1)
    assert (stats.unknown_messages, stats.bad_messages, stats.malformed_frames) == (1, 3, 1)
    assert stats.out_of_order == 0
    assert [fields(e) for e in sink.events] == [
        ("Trade", "ES", 1_378_215_000_040_000_000, 1646.5, 1, "CME", ()),
        ("Quote", "ES", 1_378_215_000_040_000_000, 1646.25, 3, 1646.5, 9),
        ("Bar", "ES", 1_378_215_000_040_000_000, 1.0, 2.0, 0.5, 1.5, 10, 0, 0.0),
        ("Trade", "ES", 1_378_215_000_040_000_000, 1646.5, 3, "", ()),
        ("Trade", "QQQ", 1_378_215_002_500_000_000, 1646.5, 4, "CME", ()),
        ("Trade", "ES", 1_378_215_001_000_000_000, 1646.5, 5, "CME", ()),
    ]
    assert all(type(e) in (Trade, Quote, Bar) for e in sink.events)


def test_bars_with_null_counts_stay_on_the_fast_path() -> None:
    frame = [
        {"T": "b", "S": "IBM", "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "n": None, "vw": None}
        | {"t": T0},
        {"T": "b", "S": "IBM", "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "n": 7, "vw": 1.2}
        | {"t": T1},
    ]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps(frame))
    assert decoder.stats.slow_frames == 0
    assert [(e.trade_count, e.vwap) for e in sink.events] == [(0, 0.0), (7, 1.2)]
    assert all(isinstance(e, Bar) for e in sink.events)


def test_fast_path_parses_every_rfc3339_form_alpaca_may_send() -> None:
    stamps = [
        "2013-09-03T13:30:00.040000000Z",
        "2013-09-03T13:30:00.0400+00:00",  # 30 characters like the cached form, not UTC "Z"
        "2013-09-03T09:30:00.5-04:00",
        "2013-09-03T13:30:01Z",
        "2013-09-03T13:30:01.123456789123Z",  # more than nine digits: truncated
    ]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps([trade(ts, i) for i, ts in enumerate(stamps)]))
    assert decoder.stats.slow_frames == 0 and decoder.stats.skipped == 0
    base = 1_378_215_000_000_000_000
    assert [e.ts - base for e in sink.events] == [
        40_000_000,
        40_000_000,
        500_000_000,
        1_000_000_000,
        1_123_456_789,
    ]


# -- the numpy parse of a frame's stamps (VECTOR_MIN or more new stamps, half the frame) --

NS = NS_PER_S
DAY_NS = 1_378_166_400_000_000_000  # 2013-09-03T00:00:00Z


def unique_stamps(n: int, start_ns: int = 13 * 3600 * NS + 59 * NS) -> list[str]:
    """n distinct nine-digit stamps from 13:00:59 on, crossing a second; every digit used."""
    out = []
    for i in range(n):
        ns = start_ns + i * 123_456_789 + (i % 10) * 111_111_111 % NS
        seconds, frac = divmod(ns, NS)
        h, rest = divmod(seconds, 3600)
        out.append(f"2013-09-03T{h:02d}:{rest // 60:02d}:{rest % 60:02d}.{frac:09d}Z")
    return sorted(out)


def expected_ns(stamp: str) -> int:
    """An independent parse: datetime for the seconds, the text's digits for the fraction."""
    head, _, frac = stamp[:-1].partition(".")
    whole = datetime_to_ns(datetime.fromisoformat(head + "+00:00"))
    return whole + int(frac[:9].ljust(9, "0"))


def test_numpy_parse_keeps_every_nanosecond() -> None:
    stamps = [*unique_stamps(100), "2013-09-03T23:59:59.999999999Z"]
    stamps[0] = "2013-09-03T00:00:00.000000001Z"
    assert len(set(stamps)) >= VECTOR_MIN
    assert frame_stamps_ns(stamps) == [expected_ns(s) for s in stamps]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps([trade(ts, i) for i, ts in enumerate(stamps)]))
    assert [e.ts for e in sink.events] == [expected_ns(s) for s in stamps]
    assert sink.events[0].ts == DAY_NS + 1
    assert sink.events[-1].ts == DAY_NS + 86_400 * NS - 1
    assert decoder.stats.trades == len(stamps) and decoder.stats.skipped == 0


HALF_PAST = DAY_NS + (13 * 3600 + 30 * 60) * NS  # 2013-09-03T13:30:00Z


@pytest.mark.parametrize(
    ("odd", "odd_ns"),
    [
        ("2013-09-03T13:30:00.0400+00:00", HALF_PAST + 40_000_000),  # 30 characters, not "Z"
        ("2013-09-03T09:30:00.5-04:00", HALF_PAST + 500_000_000),
        ("2013-09-03T13:30:01Z", HALF_PAST + NS),  # no fraction
        ("2013-09-03T13:30:01.123456789123Z", HALF_PAST + NS + 123_456_789),  # truncated
        ("2013-09-04T00:00:00.000000000Z", DAY_NS + 86_400 * NS),  # the next day, same frame
        ("2013-13-03T13:30:00.000000000Z", None),  # no month 13
        ("2013-09-03T24:30:00.000000000Z", None),  # no hour 24
        ("2013-09-03T13:30:00.00000000xZ", None),
    ],
)
def test_frames_the_numpy_parse_refuses_are_parsed_stamp_by_stamp(
    odd: str, odd_ns: int | None
) -> None:
    stamps = unique_stamps(VECTOR_MIN + 10)
    stamps.insert(10, odd)
    assert frame_stamps_ns(stamps) is None
    sink = Sink()
    decoder = sink.decoder()
    # each print its own symbol, so none is out of order whatever the odd stamp's time
    decoder.feed(orjson.dumps([trade(ts, i, symbol=f"S{i}") for i, ts in enumerate(stamps)]))
    good = [(f"S{i}", odd_ns if s == odd else expected_ns(s)) for i, s in enumerate(stamps)]
    assert [(e.symbol, e.ts) for e in sink.events] == [g for g in good if g[1] is not None]
    assert decoder.stats.bad_messages == (1 if odd_ns is None else 0)
    assert decoder.stats.slow_frames == 0


def test_repeated_stamps_are_parsed_once_each_and_exactly() -> None:
    """A frame of a few stamps repeated (one order sweeping levels) skips the numpy parse."""
    distinct = unique_stamps(VECTOR_MIN - 1)
    stamps = [s for s in distinct for _ in range(7)]
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps([trade(ts, i) for i, ts in enumerate(stamps)]))
    assert [e.ts for e in sink.events] == [expected_ns(s) for s in stamps]
    assert decoder.stats.trades == len(stamps) and decoder.stats.skipped == 0


def test_numpy_parsed_frames_drop_out_of_order_prints_per_symbol() -> None:
    """Frames in order take the C path; any print earlier than the latest one seen is
    checked against its own symbol's last print."""
    first, later, earlier = (
        unique_stamps(50, 13 * 3600 * NS),
        unique_stamps(50, 14 * 3600 * NS),
        unique_stamps(50, 12 * 3600 * NS),
    )
    sink = Sink()
    decoder = sink.decoder()
    decoder.feed(orjson.dumps([trade(ts, 1) for ts in first]))
    decoder.feed(orjson.dumps([trade(ts, 2) for ts in later]))
    # NQ's first prints are earlier than ES's latest: kept; ES's own earlier prints: dropped
    mixed = [trade(ts, 3, symbol="NQ" if i % 2 else "ES") for i, ts in enumerate(earlier)]
    decoder.feed(orjson.dumps(mixed))
    # unsorted within a frame: each print after a later one of its symbol is dropped
    decoder.feed(orjson.dumps([trade(ts, 4, symbol="QQQ") for ts in reversed(later)]))
    stats = decoder.stats
    assert (stats.trades, stats.out_of_order) == (100 + 25 + 1, 25 + 49)
    assert [e.ts for e in sink.events] == [
        *(expected_ns(s) for s in first),
        *(expected_ns(s) for s in later),
        *(expected_ns(s) for i, s in enumerate(earlier) if i % 2),
        expected_ns(later[-1]),
    ]
