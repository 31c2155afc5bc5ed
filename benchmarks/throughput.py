"""Throughput: the full path against cpquant's own ``listen`` loop, on the same stream.

Full path: replay server (subprocess) → cpquant ``AlpacaRealtimeClient`` over a real
websocket → decode → model → risk → simulated broker → book, with the session's main
thread flushing the ledger to SQLite every second: a real ``TradingSession``, run as
fast as the stream goes. Baseline: the same client and stream, ``listen`` with a handler
that only ``json.loads`` each frame and counts. Both are timed from before connecting to
the receipt of the last frame, so handshakes count alike; rounds alternate so drift in
the machine's load hits both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cpquant.data  # noqa: F401  imported here, not inside the first timed connect
import orjson

from benchmarks.common import (
    Row,
    ServerProcess,
    es_window,
    print_report,
    quiet_logger,
    session_config,
    silenced_stdout,
    workdir,
)
from tradeday.feed import open_client
from tradeday.session import TradingSession
from tradeday.sources import REPLAY_KEY

TARGET_RATIO = 0.75


@dataclass
class Run:
    trades: int
    seconds: float
    client_cpu: float  # this process's CPU seconds (all threads) during the run
    server_cpu: float  # the server process's: near ``seconds`` means the server is the limit

    @property
    def rate(self) -> float:
        return self.trades / self.seconds


def listen_only(server: ServerProcess, decode: Callable[[Any], Any] | None) -> Run:
    """cpquant's ``listen`` with a handler that decodes (or not) and counts messages."""
    count = 0
    last = 0.0

    def handler(raw: str | bytes) -> None:
        nonlocal count, last
        last = time.monotonic()
        count += len(decode(raw)) if decode is not None else 1

    cpu0, own0 = server.cpu_seconds(), time.process_time()
    t0 = time.monotonic()
    client = open_client(server.url, REPLAY_KEY, REPLAY_KEY)
    client.subscribe_trades(["ES"])
    with silenced_stdout():
        client.listen(handler)
    own = time.process_time() - own0
    client.close()
    if decode is not None and count < server.events:  # messages counted include 3 control ones
        raise RuntimeError(f"listen saw {count:,} messages of {server.events:,} trades")
    return Run(server.events, last - t0, own, server.cpu_seconds() - cpu0)


def full_path(server: ServerProcess) -> Run:
    """A real TradingSession on the stream; timed like ``listen_only``, shutdown excluded."""
    with workdir() as tmp:
        session = TradingSession(
            session_config(server.url, tmp), es_window(), logger=quiet_logger()
        )
        cpu0, own0 = server.cpu_seconds(), time.process_time()
        t0 = time.monotonic()
        try:
            with silenced_stdout():
                session.run()
            assert session.feed is not None
            seconds = session.feed.last_frame - t0
            own = time.process_time() - own0
            cpu = server.cpu_seconds() - cpu0
            trades = session.decoder.stats.trades
        finally:
            session.shutdown("completed")
            session.close()
    if trades != server.events:
        raise RuntimeError(f"full path processed {trades:,} of {server.events:,} trades")
    return Run(trades, seconds, own, cpu)


KINDS: dict[str, Callable[[ServerProcess], Run]] = {
    "full path": full_path,
    "listen + json.loads": lambda s: listen_only(s, json.loads),
    "listen + orjson.loads": lambda s: listen_only(s, orjson.loads),
    "listen, no decode": lambda s: listen_only(s, None),
}


def measure(label: str, server_args: dict[str, Any], kinds: list[str], rounds: int) -> list[Row]:
    """Alternate ``kinds`` for ``rounds`` on fresh servers; median rate of each, and the ratio."""
    runs: dict[str, list[Run]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            with ServerProcess(**server_args) as server:
                runs[kind].append(KINDS[kind](server))
    rates = {k: statistics.median(r.rate for r in rs) for k, rs in runs.items()}
    rows = []
    for kind, rs in runs.items():
        busy = statistics.median(r.server_cpu / r.seconds for r in rs)
        own = statistics.median(r.client_cpu / r.seconds for r in rs)
        spread = ", ".join(f"{r.rate / 1000:,.0f}k" for r in rs)
        rows.append(
            Row(
                "throughput",
                f"{label}: {kind}",
                rates[kind],
                "trades/s",
                note=f"{rs[0].trades:,} trades; rounds {spread}; CPU client {own:.0%}, server {busy:.0%}",
            )
        )
    if "full path" in rates and "listen + json.loads" in rates:
        ratio = rates["full path"] / rates["listen + json.loads"]
        batch = server_args.get("batch", 100)
        target = f">= {TARGET_RATIO}" if batch == 100 else ""
        rows.append(
            Row(
                "throughput",
                f"{label}: full path / json baseline",
                ratio,
                "ratio",
                target,
                (ratio >= TARGET_RATIO) if batch == 100 else None,
            )
        )
    return rows


def run(quick: bool = False) -> list[Row]:
    es = {"source": "es", "limit": 20_000 if quick else 0}
    big = 40_000 if quick else 10_000_000
    synthetic = {"source": "synthetic", "trades": big}
    synthetic_1 = {"source": "synthetic", "trades": 20_000 if quick else 1_000_000, "batch": 1}
    rounds = 1 if quick else 3
    rows = []
    rows += measure("ES day, 100/frame", es, list(KINDS), rounds)
    rows += measure(f"synthetic {big:,}, 100/frame", synthetic, list(KINDS)[:2], 1)
    rows += measure("ES day, 1/frame", {**es, "batch": 1}, list(KINDS)[:2], rounds)
    rows += measure(
        f"synthetic {synthetic_1['trades']:,}, 1/frame", synthetic_1, list(KINDS)[:2], 1
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny streams, one round")
    args = parser.parse_args()
    print_report(run(args.quick))


if __name__ == "__main__":
    main()
