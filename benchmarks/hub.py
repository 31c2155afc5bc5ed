"""The hub's fan-out: one upstream to 5 sessions, beside 5 direct connections.

The upstream is the replay server in a subprocess (``benchmarks.server``) playing a
synthetic ES stream at speed 1.0, trades 50 µs apart: 20,000 trades/s, what the busiest
live open looks like. The hub runs in this process; each session is a real cpquant client
in a process of its own (``python -m benchmarks.hub --client``) that ``orjson.loads`` every
frame, as a session's decoder would. Figures:

- **hub receipt → session receipt**, p50/p99 per trade: this process stamps each upstream
  frame as the hub's feed thread receives it (a wrapper on the router's ``feed``), each
  client stamps each frame as cpquant hands it over; frames are matched by their first
  trade id, on the machine's one monotonic clock. Product code has no timing in it.
- **lateness**, direct and through the hub: a frame's receipt minus its first trade's tick
  time, less the smallest such figure of the run (the replay's anchor): how much later than
  its best frame a session gets the stream, the same measure in both setups.
- **CPU**: each session process from its subscription to its last frame, and the hub
  (this process), per second of stream.
- **ceiling**: the same 5 sessions with the upstream as fast as it goes (speed none):
  trades/s each session receives, through the hub and directly (throughput under the
  replay server's backpressure, which Alpaca would not give: it cuts a slow client).
- **the hub's ceiling, paced**: the upstream paced at rising rates (20,000 trades/s, then
  doubling), Alpaca's way: the stream does not wait. At each rate, the sessions' lag p99
  (the lateness above) and the 407 cuts; the ceiling is the highest rate at which no
  session was cut and the lag p99 stayed under ``LAG_LIMIT_MS``, given both per upstream
  trade and in aggregate (what the hub sends to its 5 sessions).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from array import array
from typing import Any

import orjson
import psutil

from benchmarks.common import Row, ServerProcess, percentile, silenced_stdout
from tradeday.decode import parse_rfc3339_ns
from tradeday.feed import open_client
from tradeday.hub import HUB_KEY, Hub

SESSIONS = 5
RATE = 20_000
SPACING_US = 1e6 / RATE
SECRET = "bench-hub-secret"
REPLAY_KEY = "replay"
_FIRST_ID = re.compile(r'"i":(\d+)')
LAG_LIMIT_MS = 250.0
"""A session this far behind its best frame at p99 is falling behind, not jittering."""


class Client:
    """A session process: cpquant's client on ``url``, ES trades, a stamp per frame."""

    def __init__(self, url: str, key: str, secret: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.hub", "--client", url, key, secret],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "authenticated"

    def go(self) -> None:
        """Subscribe now: all clients at once, so each is there for the stream's start."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 600.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout)
        return json.loads(line)


def client_main(url: str, key: str, secret: str) -> None:
    """In a session process: listen to the end, print the stamps as one JSON line."""
    client = open_client(url, key, secret)
    print("authenticated", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    client.subscribe_trades(["ES"])
    ids, received, ticks = array("q"), array("q"), array("q")
    count = 0

    def on_frame(raw: str | bytes) -> None:
        nonlocal count
        now = time.monotonic_ns()
        messages = orjson.loads(raw)
        first = messages[0] if messages else {}
        if first.get("T") == "t":
            count += len(messages)
            ids.append(first["i"])
            received.append(now)
            ticks.append(parse_rfc3339_ns(first["t"]))

    with silenced_stdout():
        client.listen(on_frame)
    cpu = time.process_time() - cpu0
    seconds = (received[-1] - received[0]) / 1e9 if len(received) > 1 else 0.0
    print(
        json.dumps(
            {
                "trades": count,
                "seconds": seconds,
                "cpu_s": cpu,
                "ids": ids.tolist(),
                "received": received.tolist(),
                "ticks": ticks.tolist(),
            }
        )
    )


def stamped(hub: Hub) -> dict[int, int]:
    """Frame receipt times at the hub, by first trade id (wraps the router's ``feed``)."""
    stamps: dict[int, int] = {}
    feed = hub.router.feed

    def feed_and_stamp(raw: str | bytes) -> None:
        now = time.monotonic_ns()
        text = raw if isinstance(raw, str) else raw.decode()
        match = _FIRST_ID.search(text, 0, 200)
        if match:
            stamps[int(match[1])] = now
        feed(raw)

    hub.router.feed = feed_and_stamp  # type: ignore[method-assign]
    return stamps


def lateness_us(result: dict[str, Any]) -> list[float]:
    offsets = [r - t for r, t in zip(result["received"], result["ticks"], strict=True)]
    base = min(offsets)
    return sorted((o - base) / 1000 for o in offsets)


def run_setup(
    via_hub: bool, server: ServerProcess
) -> tuple[list[dict[str, Any]], float, dict, int]:
    """Five clients on the upstream, directly or through a hub: their results, the hub's
    CPU, its frame stamps and its 407 cuts."""
    hub: Hub | None = None
    stamps: dict[int, int] = {}
    url, key, secret = server.url, REPLAY_KEY, REPLAY_KEY
    if via_hub:
        hub = Hub(server.url, REPLAY_KEY, REPLAY_KEY, secret=SECRET).start()
        stamps = stamped(hub)
        url, key, secret = hub.url, HUB_KEY, SECRET
    own = psutil.Process()
    cpu0 = sum(own.cpu_times()[:2])
    try:
        clients = [Client(url, key, secret) for _ in range(SESSIONS)]
        for c in clients:
            c.go()
        results = [c.result() for c in clients]
    finally:
        hub_cpu = sum(own.cpu_times()[:2]) - cpu0
        if hub is not None:
            hub.stop()
    return results, hub_cpu, stamps, hub.stats.slow_cuts if hub is not None else 0


def run(quick: bool = False) -> list[Row]:
    trades = 20_000 if quick else 200_000  # 1 s or 10 s of stream
    rows: list[Row] = []
    for via_hub in (False, True):
        label = "through the hub" if via_hub else "direct"
        server = ServerProcess(
            "synthetic",
            trades=trades,
            spacing_us=SPACING_US,
            speed=1.0,
            max_connections=SESSIONS,
        )
        with server:
            results, hub_cpu, stamps, _ = run_setup(via_hub, server)
        fewest = min(r["trades"] for r in results)
        if fewest < trades - RATE // 2:  # what streamed before the last "go" arrived is missed
            raise RuntimeError(f"{label}: a session got {fewest:,} of {trades:,} trades")
        seconds = max(r["seconds"] for r in results) or 1.0
        late = sorted(x for r in results for x in lateness_us(r))
        rows.append(
            Row(
                "hub",
                f"{SESSIONS} sessions at {RATE:,} trades/s, {label}: lateness p50 / p99",
                percentile(late, 99),
                "µs",
                note=f"p50 {percentile(late, 50):,.0f} µs",
            )
        )
        cpu = sorted(r["cpu_s"] / seconds for r in results)
        rows.append(
            Row(
                "hub",
                f"{label}: CPU per session",
                100 * percentile(cpu, 50),
                "% of a core",
                note=f"{trades:,} trades in {seconds:.1f} s; the fewest a session got: {fewest:,}",
            )
        )
        if via_hub:
            added = sorted(
                (t - stamps[i]) / 1000
                for r in results
                for i, t in zip(r["ids"], r["received"], strict=True)
                if i in stamps
            )
            rows.append(
                Row(
                    "hub",
                    "**hub receipt → session receipt** p50 / p99",
                    percentile(added, 99),
                    "µs",
                    note=f"p50 {percentile(added, 50):,.0f} µs; {len(added):,} frames",
                )
            )
            rows.append(Row("hub", "the hub's CPU", 100 * hub_cpu / seconds, "% of a core"))
    rows += ceiling(20_000 if quick else 500_000)
    rows += paced_ceiling((RATE,) if quick else tuple(RATE * 2**k for k in range(5)))
    return rows


def paced_ceiling(rates: tuple[int, ...], seconds: float = 3.0) -> list[Row]:
    """The upstream paced at each rate in turn, through the hub, until sessions fall behind."""
    rows, kept = [], 0
    for rate in rates:
        trades = int(rate * seconds)
        with ServerProcess("synthetic", trades=trades, spacing_us=1e6 / rate, speed=1.0) as server:
            results, _, _, cuts = run_setup(True, server)
        late = sorted(x for r in results for x in lateness_us(r))
        lag_ms = percentile(late, 99) / 1000
        fewest = min(r["trades"] for r in results)
        keeps_up = cuts == 0 and lag_ms < LAG_LIMIT_MS
        rows.append(
            Row(
                "hub",
                f"paced {rate:,} trades/s upstream, {SESSIONS * rate:,}/s to sessions: lag p99",
                lag_ms,
                "ms",
                note=f"{'keeps up' if keeps_up else 'falls behind'}; 407 cuts {cuts}; "
                f"the fewest a session got: {fewest:,} of {trades:,}",
            )
        )
        if not keeps_up:
            break
        kept = rate
    rows.append(
        Row(
            "hub",
            f"**the hub's ceiling**, paced: upstream trades/s kept up with (x{SESSIONS} sent)",
            kept,
            "trades/s",
            note=f"{SESSIONS * kept:,} trades/s in aggregate to sessions; "
            f"lag p99 < {LAG_LIMIT_MS:.0f} ms, no 407",
        )
    )
    return rows


def ceiling(trades: int) -> list[Row]:
    """The same fan-out as fast as the upstream goes: trades/s each session receives."""
    rows = []
    for via_hub in (False, True):
        label = "through the hub" if via_hub else "direct"
        with ServerProcess("synthetic", trades=trades, max_connections=SESSIONS) as server:
            results, _, _, _ = run_setup(via_hub, server)
        rate = sorted(r["trades"] / max(r["seconds"], 1e-9) for r in results)
        rows.append(
            Row(
                "hub",
                f"ceiling, {SESSIONS} sessions, {label}: trades/s each (slowest)",
                rate[0],
                "trades/s",
                note=f"median {percentile(rate, 50):,.0f}; {trades:,} trades",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--client", nargs=3, metavar=("URL", "KEY", "SECRET"))
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return
    from benchmarks.common import print_report

    print_report(run(args.quick))


if __name__ == "__main__":
    main()
