"""Regenerate the Parquet recordings shipped in tradeday/recordings and the test fixture.

Usage: python scripts/make_recordings.py [--source /work/shared/data]

The raw CSVs are not in the repo (see tradeday/recordings/README.md for their origin and
licences); this script is the only thing that reads them, so tests and demos never depend
on a machine-local data folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tradeday import recording

ROOT = Path(__file__).resolve().parent.parent
BAR_SYMBOLS = ("AAPL", "MSFT", "NVDA", "IBM")
RTH_OPEN_2013_09_03_NS = 1_378_215_000_000_000_000  # 2013-09-03 13:30 UTC = 09:30 New York
FIXTURE_ROWS = 5_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    args = parser.parse_args()
    out = ROOT / "tradeday" / "recordings"

    es = recording.from_es_ticks_csv(args.source / "es-futures-ticks-2013-09.csv.gz", "ES")
    report(recording.write(es, out / "es-2013-09.parquet"), es)

    bars = pa.concat_tables(
        recording.from_minute_bars_csv(args.source / f"minute-bars-{s}-2023-01.csv.gz", s)
        for s in BAR_SYMBOLS
    )
    bars = recording.conform(bars)  # re-sort: symbols interleave in time order
    report(recording.write(bars, out / "bars-2023-01.parquet"), bars)

    rth = es.filter(pc.greater_equal(es["ts"], RTH_OPEN_2013_09_03_NS))
    fixture = rth.slice(0, FIXTURE_ROWS)
    report(
        recording.write(fixture, ROOT / "tests" / "fixtures" / "es-2013-09-03-open.parquet"),
        fixture,
    )
    print(f"ES RTH 2013-09-03 trades: {len(rth):,}")


def report(path: Path, table: pa.Table) -> None:
    print(f"{path.relative_to(ROOT)}: {len(table):,} rows, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
