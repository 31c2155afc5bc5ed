"""Memory: the session process's RSS every 1 M trades over a 10 M-trade replay.

A real ``TradingSession`` (ledger flushed to SQLite every second) reads a synthetic
10 M-trade ES-like day as fast as the replay server (a subprocess, so its own memory
is not counted) sends it. A sampler thread reads RSS each time the decoder's trade count
passes a multiple of 1 M. Growth is reported from the first sample (1 M trades, once
caches and buffers have warmed up) to the last, and from before the first trade.
"""

from __future__ import annotations

import argparse
import threading

from benchmarks.common import (
    Row,
    ServerProcess,
    es_window,
    print_report,
    quiet_logger,
    rss_mb,
    session_config,
    silenced_stdout,
    workdir,
)
from tradeday.session import TradingSession

TARGET_GROWTH_MB = 50.0


def measure(trades: int, step: int) -> tuple[float, list[tuple[int, float]], float]:
    """(RSS before streaming, [(trades, RSS)] every ``step`` trades, server RSS), in MB."""
    samples: list[tuple[int, float]] = []
    with ServerProcess("synthetic", trades=trades, batch=100) as server, workdir() as tmp:
        session = TradingSession(
            session_config(server.url, tmp), es_window(), logger=quiet_logger()
        )
        done = threading.Event()

        def sample() -> None:
            stats = session.decoder.stats
            next_at = step
            while next_at <= trades and not done.wait(0.005):
                if stats.trades >= next_at:
                    samples.append((stats.trades, rss_mb()))
                    next_at += step

        start = rss_mb()
        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            with silenced_stdout():
                session.run()
        finally:
            done.set()
            sampler.join()
            session.shutdown("completed")
            session.close()
    if session.decoder.stats.trades != trades:
        raise RuntimeError(f"memory run processed {session.decoder.stats.trades:,} of {trades:,}")
    return start, samples, server.stats.get("rss_mb", server.rss_mb)


def run(quick: bool = False) -> list[Row]:
    trades, step = (200_000, 20_000) if quick else (10_000_000, 1_000_000)
    start, samples, server_mb = measure(trades, step)
    first, last = samples[0][1], samples[-1][1]
    growth = last - first
    curve = ", ".join(f"{n / 1e6:g}M {mb:.0f}" for n, mb in samples)
    return [
        Row(
            "memory", "RSS before streaming", start, "MB", note=f"server process {server_mb:.0f} MB"
        ),
        Row("memory", f"RSS at {samples[0][0]:,} trades", first, "MB"),
        Row("memory", f"RSS at {samples[-1][0]:,} trades", last, "MB", note=curve),
        Row(
            "memory",
            f"RSS growth {samples[0][0] / 1e6:g}M → {samples[-1][0] / 1e6:g}M trades",
            growth,
            "MB",
            f"< {TARGET_GROWTH_MB:.0f}",
            growth < TARGET_GROWTH_MB,
        ),
        Row("memory", "RSS growth from before streaming", last - start, "MB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 k trades instead of 10 M")
    args = parser.parse_args()
    print_report(run(args.quick))


if __name__ == "__main__":
    main()
