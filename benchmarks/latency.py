"""Latency at 5,000 trades/s over the websocket: frame receipt → order decision → simulated fill.

A synthetic ES-like stream with trades 200 µs apart is played at speed 1.0 by the replay
server (subprocess) into a real ``TradingSession``. Timing lives only in this benchmark:
a ``StreamFeed`` subclass stamps each frame as cpquant hands it over (the feed's on-frame
callback), a model wrapper stamps the moment the model returned for every trade, and the
broker's execution queue stamps each fill as the simulated broker records it. Each
trade's figure is measured from its own frame's receipt, so the trades queued behind it
in the same frame count too (the table shows how many trades frames carry). The
session's main thread flushes the ledger every second
as usual: its GIL time is part of what the tail shows.

At 5,000 trades/s a frame comes every ~1.2 ms and the feed thread sleeps in between, so
the tail also holds the cost of a CPU waking from idle (on a VM, the guest halts and the
hypervisor may run others). ``wake-up`` separates that from tradeday's code: the same
6-trade frames of the recorded day go through a session's decoder and engine (no socket)
after 1.2 ms asleep, and after 1.2 ms of busy-waiting that keeps the core awake.
``machine`` counts the pauses a thread that never sleeps sees: a frame that takes w µs
meets one with a chance of about rate × (w + a pause's length); once that passes 1 %,
the p99 measures the machine's pauses, not tradeday's code.
"""

from __future__ import annotations

import argparse
import time
from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any
from unittest import mock

from benchmarks.common import (
    Row,
    ServerProcess,
    es_window,
    percentile,
    print_report,
    quiet_logger,
    session_config,
    silenced_stdout,
    workdir,
)
from benchmarks.hotpath import es_frames
from tradeday import session as session_module
from tradeday.brokers.base import ExecType, Execution
from tradeday.events import Order, Trade
from tradeday.feed import StreamFeed
from tradeday.session import TradingSession

RATE = 5_000
TARGET_P99_US = 100.0
GAP_S = 1.2e-3  # between frames at 5,000 trades/s and ~6 trades a frame


class Probe:
    """Where the instrumented pieces leave their stamps (nanoseconds, perf_counter)."""

    def __init__(self) -> None:
        self.frame_ns = 0
        self.active = True
        self.decision = array("q")
        self.fill = array("q")
        self.frame_trades = array("q")


def timed_feed(probe: Probe) -> type[StreamFeed]:
    class TimedFeed(StreamFeed):
        def _on_frame(self, raw: str | bytes) -> None:
            probe.frame_ns = time.perf_counter_ns()
            before = self.decoder.stats.trades
            super()._on_frame(raw)
            probe.frame_trades.append(self.decoder.stats.trades - before)

    return TimedFeed


class TimedModel:
    """Wraps the session's model: stamps every trade's decision, passes everything through."""

    def __init__(self, inner: Any, probe: Probe) -> None:
        self.inner = inner
        self.probe = probe

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        orders = self.inner.on_trade(trade, position)
        probe = self.probe
        if probe.active:
            probe.decision.append(time.perf_counter_ns() - probe.frame_ns)
        return orders

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedExecutions(deque):
    """The broker's execution queue, stamping each fill as the broker records it."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def append(self, execution: Execution) -> None:
        probe = self.probe
        if probe.active and execution.kind is ExecType.FILL:
            probe.fill.append(time.perf_counter_ns() - probe.frame_ns)
        super().append(execution)


def measure(seconds: float) -> tuple[Probe, dict[str, float]]:
    trades = int(seconds * RATE)
    probe = Probe()
    with (
        ServerProcess(
            "synthetic", trades=trades, spacing_us=1e6 / RATE, speed=1.0, batch=100
        ) as server,
        workdir() as tmp,
    ):
        session = TradingSession(
            session_config(server.url, tmp), es_window(), logger=quiet_logger()
        )
        session.engine.model = TimedModel(session.engine.model, probe)
        session.broker.executions = TimedExecutions(probe)
        t0 = time.monotonic()
        try:
            with (
                mock.patch.object(session_module, "StreamFeed", timed_feed(probe)),
                silenced_stdout(),
            ):
                session.run()
            probe.active = False
            assert session.feed is not None
            elapsed = session.feed.last_frame - t0
            frames = session.decoder.stats.frames
            got = session.decoder.stats.trades
        finally:
            probe.active = False
            session.shutdown("completed")
            session.close()
    if got != trades:
        raise RuntimeError(f"latency run processed {got:,} of {trades:,} trades")
    return probe, {"rate": got / elapsed, "per_frame": got / max(frames, 1)}


def wake_up(frames: int) -> dict[str, list[float]]:
    """µs per 6-trade frame through decoder and engine, after sleeping vs after spinning."""
    batches = es_frames(6, frames * 6)
    timings: dict[str, list[float]] = {"asleep": [], "busy": []}
    with workdir() as tmp:
        session = TradingSession(
            session_config("ws://unused", tmp), es_window(), logger=quiet_logger()
        )
        try:
            for i, raw in enumerate(batches):
                asleep = i % 2 == 0  # interleaved, so drifts in the machine hit both alike
                if asleep:
                    time.sleep(GAP_S)
                else:
                    end = time.perf_counter() + GAP_S
                    while time.perf_counter() < end:
                        pass
                t0 = time.perf_counter_ns()
                session.decoder.feed(raw)
                timings["asleep" if asleep else "busy"].append((time.perf_counter_ns() - t0) / 1000)
        finally:
            session.close()
    return {k: sorted(v) for k, v in timings.items()}


def stalls(seconds: float) -> list[float]:
    """µs of each pause longer than 20 µs seen by a thread that never sleeps.

    Whatever stops a busy thread (interrupts, the hypervisor running something else) stops
    the feed thread the same way: this is the machine's floor under any latency tail.
    """
    clock = time.perf_counter_ns
    last = clock()
    end = last + int(seconds * 1e9)
    gaps: list[float] = []
    while last < end:
        now = clock()
        if now - last > 20_000:
            gaps.append((now - last) / 1000)
        last = now
    return sorted(gaps)


def run(quick: bool = False) -> list[Row]:
    probe, info = measure(1.0 if quick else 30.0)
    rows = []
    for name, values in (("decision", probe.decision), ("fill", probe.fill)):
        us = sorted(v / 1000 for v in values)
        note = f"{len(us):,} samples at {info['rate']:,.0f} trades/s, {info['per_frame']:.1f} trades/frame"
        for q, label in ((50, "p50"), (99, "p99"), (99.9, "p99.9")):
            value = percentile(us, q)
            is_target = name == "decision" and label == "p99"
            rows.append(
                Row(
                    "latency",
                    f"frame → {name} {label}",
                    value,
                    "µs",
                    f"< {TARGET_P99_US:.0f}" if is_target else "",
                    (value < TARGET_P99_US) if is_target else None,
                    note if label == "p50" else "",
                )
            )
        rows.append(Row("latency", f"frame → {name} max", us[-1] if us else float("nan"), "µs"))
    sizes = sorted(n for n in probe.frame_trades if n)
    for q in (50, 99):
        note = "a trade waits for those before it in its frame" if q == 99 else ""
        rows.append(
            Row("latency", f"trades per frame p{q}", percentile(sizes, q), "trades", note=note)
        )
    seconds = 0.5 if quick else 3.0
    gaps = stalls(seconds)
    rows += [
        Row(
            "machine",
            "pauses > 20 µs of a busy thread",
            len(gaps) / seconds,
            "per s",
            note=f"over {seconds:g} s of a loop that only reads the clock",
        ),
        Row("machine", "pause p50", percentile(gaps, 50), "µs"),
        Row("machine", "pause max", gaps[-1] if gaps else 0.0, "µs"),
        Row("machine", "time lost to pauses", sum(gaps) / seconds / 1e4, "%"),
    ]
    for state, us in wake_up(400 if quick else 6000).items():
        for q in (50, 99):
            note = f"{len(us):,} frames of 6 ES trades, no socket" if q == 50 else ""
            rows.append(
                Row(
                    "wake-up",
                    f"decoder + engine per frame after {GAP_S * 1e3:.1f} ms {state}, p{q}",
                    percentile(us, q),
                    "µs",
                    note=note,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s of stream instead of 30 s")
    args = parser.parse_args()
    print_report(run(args.quick))


if __name__ == "__main__":
    main()
