"""The hot path alone: decode → model → risk → broker → book on pre-encoded frames, no socket.

The frames are the replay server's own bytes for the recorded day, handed to a real
``TradingSession``'s decoder in a loop, so this is the CPU cost per trade of tradeday's
code and nothing else: the figure to profile and optimise against, far steadier than a
run over a websocket on a shared machine (thread CPU time, each chunk of frames counted
at its least disturbed round, since a loaded VM inflates even CPU time). ``json.loads``/``orjson.loads`` of the same
frames are the yardsticks. The synthetic stream's frames follow: every trade there has
its own timestamp, as live SIP prints do, where most recorded ES prints repeat one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator

import orjson
import pyarrow as pa

from benchmarks.common import (
    ES_DAY,
    Row,
    es_window,
    print_report,
    quiet_logger,
    session_config,
    workdir,
)
from benchmarks.server import synthetic_trades
from tradeday import recording
from tradeday.replay.server import BLOCK
from tradeday.replay.wire import Block, Format, join
from tradeday.session import TradingSession


def es_frames(per_frame: int, limit: int = 0) -> list[str]:
    """The recorded day's regular-hours trades as JSON text frames, exactly as served."""
    window = es_window()
    table = recording.load(
        recording.bundled(ES_DAY), start_ns=window.open_ns, end_ns=window.close_ns
    )
    if limit:
        table = table.slice(0, limit)
    return frames_of(table, per_frame)


def synthetic_frames(trades: int) -> list[str]:
    """The synthetic stream's trades, 100 a frame: every one with its own timestamp."""
    window = es_window()
    spacing = (window.close_ns - window.open_ns) // 10_000_000  # as in the 10 M-trade day
    return frames_of(synthetic_trades(trades, window.open_ns, spacing), 100)


def frames_of(table: pa.Table, per_frame: int) -> list[str]:
    items: list[bytes] = []
    for start in range(0, len(table), BLOCK):
        items += Block(table, start, min(start + BLOCK, len(table))).encoded(Format.JSON)
    return [
        join(items[i : i + per_frame], Format.JSON).decode()
        for i in range(0, len(items), per_frame)
    ]


CHUNK = 5
"""Frames timed at a time: short enough that, over the rounds, most chunks have a pass no
other process disturbed, even on a loaded machine."""


@contextlib.contextmanager
def session_feed(trades: int) -> Iterator[Callable[[str], object]]:
    """A fresh session's decoder and engine (ledger never flushed); checks nothing dropped."""
    with workdir() as tmp:
        session = TradingSession(
            session_config("ws://unused", tmp), es_window(), logger=quiet_logger()
        )
        try:
            yield session.decoder.feed
            if session.decoder.stats.trades != trades:
                raise RuntimeError("the decoder dropped trades")
        finally:
            session.close()


def best_of(frames: list[str], trades: int, rounds: int) -> dict[str, float]:
    """CPU µs per trade of each way to handle the frames, side by side.

    Thread CPU time, so time other processes take from us does not count; the ways take
    turns chunk by chunk, and each chunk counts with its least disturbed pass of the rounds.
    """
    chunks = [frames[i : i + CHUNK] for i in range(0, len(frames), CHUNK)]
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        with session_feed(trades) as feed:
            ways = {"json.loads": json.loads, "orjson.loads": orjson.loads}
            ways["decoder + engine"] = feed
            for k, chunk in enumerate(chunks):
                for name, handle in ways.items():
                    t0 = time.thread_time_ns()
                    for raw in chunk:
                        handle(raw)
                    ns = time.thread_time_ns() - t0
                    least = best.setdefault(name, [float("inf")] * len(chunks))
                    least[k] = min(least[k], ns)
    return {name: sum(least) / trades / 1000 for name, least in best.items()}


def run(quick: bool = False, rounds: int = 5) -> list[Row]:
    rounds = 1 if quick else rounds
    es = es_frames(100, 20_000 if quick else 0)
    synthetic = synthetic_frames(20_000 if quick else 358_000)
    rows = []
    for label, frames in (("", es), ("synthetic: ", synthetic)):
        trades = sum(raw.count('"T":"t"') for raw in frames)
        best = best_of(frames, trades, rounds)
        what = "ES trades" if not label else "synthetic trades (every timestamp unique)"
        note = f"{trades:,} {what}, 100/frame, no socket, least of {rounds} per {CHUNK} frames"
        rows += [
            Row("hot path", f"{label}{name} per trade", us, "µs CPU", note=note)
            for name, us in best.items()
        ]
        rows.append(
            Row(
                "hot path",
                f"{label}decoder + engine, trades/s",
                1e6 / best["decoder + engine"],
                "trades/s",
                note="one core, no I/O",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_report(run(args.quick, args.rounds))


if __name__ == "__main__":
    main()
