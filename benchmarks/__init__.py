"""tradeday's benchmark suite: figures measured side by side in one run (docs/benchmarks.md).

``python -m benchmarks`` runs every benchmark and prints one table; each module also runs
alone (``python -m benchmarks.throughput --quick``). Benchmarks print figures, they never
assert: the shared machines are too noisy for timed tests. tests/test_benchmarks_smoke.py
runs each one in a tiny mode so the scripts keep working.
"""

ALL = (
    "hotpath",
    "throughput",
    "latency",
    "memory",
    "report_write",
    "startup",
    "cancel",
    "hub",
    "sweep",
)
"""Benchmark modules in the order ``python -m benchmarks`` runs them."""
