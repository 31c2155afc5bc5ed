"""The replay server as a benchmark subprocess (see ``common.ServerProcess``).

Prints one JSON line ``{"url", "events", "rss_mb"}`` once clients can connect, serves until
its stdin closes, then prints its counters as a second JSON line and exits.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pyarrow as pa

from benchmarks.common import ES_DAY, es_window, rss_mb
from tradeday import recording
from tradeday.replay.server import ReplayServer


def synthetic_trades(n: int, start_ns: int, spacing_ns: int, seed: int = 7) -> pa.Table:
    """``n`` ES-like trades ``spacing_ns`` apart: sizes drawn from the recorded day's, so the
    model orders as often as on real data, and a random-walk price in 0.25 ticks kept
    within a 20-point day range.

    The columns a trade leaves null all share one zero buffer: materialised, they would
    cost 80 MB each at 10 M rows.
    """
    rng = np.random.default_rng(seed)
    real_sizes = recording.load(recording.bundled(ES_DAY), kinds=["t"])["size"].to_numpy()
    steps = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=n, p=[0.05, 0.9, 0.05])
    columns = {
        "ts": pa.array(start_ns + spacing_ns * np.arange(n, dtype=np.int64)),
        "symbol": _repeated("ES", n),
        "kind": _repeated("t", n),
        "price": pa.array(1646.5 + 0.25 * _folded(np.cumsum(steps, dtype=np.int64), 80)),
        "size": pa.array(rng.choice(real_sizes, size=n)),
        "exchange": _repeated("CME", n),
        "trade_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
    }
    del steps
    zeros = pa.py_buffer(np.zeros(8 * (n + 1), np.uint8))
    validity = pa.py_buffer(np.zeros((n + 7) // 8, np.uint8))
    for field in recording.SCHEMA:
        if field.name not in columns:
            columns[field.name] = _nulls(field.type, n, validity, zeros)
    return recording.conform(pa.table(columns, schema=recording.SCHEMA))


def _folded(walk: np.ndarray, ticks: int) -> np.ndarray:
    """A random walk reflected into ``[0, ticks]``: an intraday range, not a drift to zero."""
    phase = np.abs(walk) % (2 * ticks)
    return np.where(phase > ticks, 2 * ticks - phase, phase)


def _repeated(text: str, n: int) -> pa.Array:
    """``text`` n times as a plain string column, built without a Python list."""
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * len(text))
    return pa.Array.from_buffers(
        pa.string(), n, [None, offsets.buffers()[1], pa.py_buffer(text.encode() * n)]
    )


def _nulls(kind: pa.DataType, n: int, validity: pa.Buffer, zeros: pa.Buffer) -> pa.Array:
    if pa.types.is_list(kind):
        empty = pa.array([], kind.value_type)
        return pa.ListArray.from_buffers(kind, n, [validity, zeros], null_count=n, children=[empty])
    if pa.types.is_string(kind):
        return pa.Array.from_buffers(kind, n, [validity, zeros, pa.py_buffer(b"")], null_count=n)
    return pa.Array.from_buffers(kind, n, [validity, zeros], null_count=n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", choices=("es", "synthetic"), required=True)
    parser.add_argument("--trades", type=int, default=0, help="synthetic: how many trades")
    parser.add_argument(
        "--spacing-us", type=float, default=0.0, help="synthetic: tick-time gap (0: a whole day)"
    )
    parser.add_argument("--limit", type=int, default=0, help="es: only the first N trades")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--speed", type=float, default=None)
    parser.add_argument("--max-connections", type=int, default=1)
    args = parser.parse_args()
    window = es_window()
    if args.source == "es":
        data: pa.Table | object = recording.load(
            recording.bundled(ES_DAY), start_ns=window.open_ns, end_ns=window.close_ns
        )
        if args.limit:
            data = data.slice(0, args.limit)
    else:
        span = window.close_ns - window.open_ns - 10**9
        spacing = int(args.spacing_us * 1000) or span // max(args.trades, 1)
        if spacing * args.trades > span:
            raise SystemExit(f"{args.trades} trades {spacing} ns apart do not fit in a session")
        data = synthetic_trades(args.trades, window.open_ns, spacing)
    server = ReplayServer(
        data, speed=args.speed, batch=args.batch, max_connections=args.max_connections
    ).start()
    print(json.dumps({"url": server.url, "events": server.stats.events, "rss_mb": rss_mb()}))
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()
    stats = server.stats
    print(json.dumps({"frames": stats.frames, "sent": stats.sent, "rss_mb": rss_mb()}))


if __name__ == "__main__":
    main()
