"""The recorded-data format, its converters (DST included) and the bundled recordings."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tradeday import recording

FIXTURE = Path(__file__).parent / "fixtures" / "es-2013-09-03-open.parquet"
RTH_OPEN_NS = 1_378_215_000_000_000_000  # 2013-09-03 13:30 UTC


def ns(text: str) -> int:
    """UTC nanoseconds for an ISO time with offset."""
    value = datetime.fromisoformat(text).astimezone(UTC)
    return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000


def test_schema_columns_and_types() -> None:
    assert recording.SCHEMA.names == [
        "ts", "symbol", "kind", "price", "size", "bid_price", "bid_size", "ask_price",
        "ask_size", "bid_exchange", "ask_exchange", "open", "high", "low", "close", "volume",
        "trade_count", "vwap", "conditions", "exchange", "trade_id", "tape",
    ]  # fmt: skip
    assert recording.SCHEMA.field("ts").type == pa.int64()
    assert recording.SCHEMA.field("conditions").type == pa.list_(pa.string())
    assert recording.SCHEMA.field("volume").type == pa.int64()


def test_write_sorts_stably_and_load_filters(tmp_path: Path) -> None:
    t0 = 1_700_000_000_000_000_000  # 2023-11-14: write refuses implausible timestamps
    df = pd.DataFrame(
        {
            "ts": [t0 + 30, t0 + 10, t0 + 20, t0 + 10, t0 + 20],
            "symbol": ["A", "B", "A", "A", "B"],
            "kind": ["t", "t", "q", "t", "b"],
            "price": [3.0, 1.0, None, 1.5, None],
            "size": [3, 1, None, 2, None],
            "trade_id": [5, 1, None, 2, None],
        }
    )
    path = recording.write(df, tmp_path / "r.parquet")
    table = recording.load(path)
    assert table.schema == recording.SCHEMA
    assert table["ts"].to_pylist() == [t0 + 10, t0 + 10, t0 + 20, t0 + 20, t0 + 30]
    assert table["trade_id"].to_pylist() == [1, 2, None, None, 5]  # equal ts keep file order
    assert table["bid_price"].null_count == 5
    assert recording.load(path, symbols=["A"])["ts"].to_pylist() == [t0 + 10, t0 + 20, t0 + 30]
    window = recording.load(path, start_ns=t0 + 20, end_ns=t0 + 30)
    assert window["ts"].to_pylist() == [t0 + 20, t0 + 20]
    assert recording.load(path, kinds=["t"], symbols=["A"])["price"].to_pylist() == [1.5, 3.0]


def test_conform_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        recording.conform(pa.table({"ts": [1], "symbol": ["A"], "kind": ["t"], "px": [1.0]}))
    with pytest.raises(ValueError, match="nulls"):
        recording.conform(pa.table({"ts": [1, None], "symbol": ["A", "A"], "kind": ["t", "t"]}))
    with pytest.raises(ValueError, match="kind"):
        recording.conform(pa.table({"ts": [1], "symbol": ["A"], "kind": ["x"]}))


def test_es_ticks_are_central_time_with_dst(tmp_path: Path) -> None:
    csv = tmp_path / "es.csv"
    csv.write_text(
        "DateTime,Price,Volume\n"
        "2013-09-01 17:00:00.083,1640.25,8\n"  # CDT
        "2013-11-03 01:30:00.000,1700.00,1\n"  # first pass of the repeated hour: CDT
        "2013-11-03 01:10:00.000,1700.25,2\n"  # clock went back: CST
        "2013-12-02 08:30:00.500,1800.50,3\n"  # CST
    )
    table = recording.from_es_ticks_csv(csv)
    assert table["ts"].to_pylist() == [
        ns("2013-09-01T17:00:00.083-05:00"),
        ns("2013-11-03T01:30:00-05:00"),
        ns("2013-11-03T01:10:00-06:00"),  # 07:10 UTC: after 06:30 UTC, so order is kept
        ns("2013-12-02T08:30:00.500-06:00"),
    ]
    assert table["symbol"].to_pylist() == ["ES"] * 4
    assert table["kind"].to_pylist() == ["t"] * 4
    assert table["trade_id"].to_pylist() == [1, 2, 3, 4]
    assert table["exchange"].to_pylist() == ["CME"] * 4
    assert table["size"].to_pylist() == [8, 1, 2, 3]


def test_minute_bars_move_label_from_end_to_start(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "timestamp,o,h,l,c,v\n"
        "2023-01-03 09:31:00,1.0,2.0,0.5,1.5,100\n"  # EST: 09:30 New York = 14:30 UTC
        "2023-07-03 09:31:00,1.0,2.0,0.5,1.5,200\n"  # EDT: 13:30 UTC
    )
    table = recording.from_minute_bars_csv(csv, "AAPL")
    assert table["ts"].to_pylist() == [
        ns("2023-01-03T14:30:00+00:00"),
        ns("2023-07-03T13:30:00+00:00"),
    ]
    assert table["kind"].to_pylist() == ["b", "b"]
    assert table["volume"].to_pylist() == [100, 200]
    assert table["close"].to_pylist() == [1.5, 1.5]
    assert table["price"].null_count == 2


def test_generic_csv(tmp_path: Path) -> None:
    naive = tmp_path / "naive.csv"
    naive.write_text("time,symbol,price,size\n2024-03-10 03:00:00,SPY,500.5,10\n")
    table = recording.from_csv(naive, tz="America/New_York")  # first EDT hour after the gap
    assert table["ts"].to_pylist() == [ns("2024-03-10T03:00:00-04:00")]
    aware = tmp_path / "aware.csv"
    aware.write_text(
        "ts,symbol,price,size,exchange\n"
        "2024-01-02T14:30:00.000000001Z,SPY,470.0,5,V\n"
        "2024-01-02T09:29:00-05:00,QQQ,400.0,1,V\n"
    )
    table = recording.from_csv(aware)
    assert table["symbol"].to_pylist() == ["QQQ", "SPY"]
    assert table["ts"].to_pylist() == [
        ns("2024-01-02T14:29:00+00:00"),
        ns("2024-01-02T14:30:00+00:00") + 1,
    ]
    assert table["exchange"].to_pylist() == ["V", "V"]
    ints = tmp_path / "ints.csv"
    ints.write_text("ts,price,size\n5,1.0,1\n")
    assert recording.from_csv(ints, symbol="X")["symbol"].to_pylist() == ["X"]
    with pytest.raises(ValueError, match="symbol"):
        recording.from_csv(ints)


def test_bundled_days_and_lookup() -> None:
    es = recording.bundled(date(2013, 9, 3))
    assert es.name == "es-2013-09.parquet"
    assert recording.bundled() == es
    assert recording.days(es) == [date(2013, 9, 1), date(2013, 9, 2), date(2013, 9, 3)]
    bars = recording.bundled(date(2023, 1, 30))
    assert bars.name == "bars-2023-01.parquet"
    sessions = recording.days(bars)
    assert len(sessions) == 19
    assert sessions[0] == date(2023, 1, 3)
    assert sessions[-1] == date(2023, 1, 30)
    assert set(recording.bundled_days()) == set(sessions) | set(recording.days(es))
    with pytest.raises(LookupError, match="2013-09-03"):
        recording.bundled(date(2020, 1, 2))


def test_bundled_es_recording() -> None:
    table = recording.load(recording.bundled(date(2013, 9, 3)), symbols=["ES"], kinds=["t"])
    assert table.num_rows == 500_000
    rth = recording.load(recording.bundled(), start_ns=RTH_OPEN_NS)
    assert rth.num_rows == 358_004
    first = rth.slice(0, 1).to_pylist()[0]
    assert first["ts"] == ns("2013-09-03T08:30:00.040-05:00")
    assert first["price"] == 1646.5
    assert first["size"] == 21
    assert first["trade_id"] == 141_997
    assert recording.bundled().stat().st_size < 3_000_000


def test_bundled_bar_recording() -> None:
    table = recording.load(recording.bundled(date(2023, 1, 3)))
    counts = pd.Series(table["symbol"].to_pylist()).value_counts().to_dict()
    assert counts == {"AAPL": 7410, "MSFT": 7410, "NVDA": 7410, "IBM": 7409}  # IBM misses one
    day = recording.load(
        recording.bundled(date(2023, 1, 3)),
        symbols=["AAPL"],
        start_ns=ns("2023-01-03T00:00:00+00:00"),
        end_ns=ns("2023-01-04T00:00:00+00:00"),
    )
    assert day.num_rows == 390
    assert day["ts"][0].as_py() == ns("2023-01-03T09:30:00-05:00")  # Alpaca: bar start
    assert day["ts"][389].as_py() == ns("2023-01-03T15:59:00-05:00")
    assert day["open"][0].as_py() == 129.76819
    assert day["volume"][0].as_py() == 463_769


def test_fixture_is_first_rth_trades() -> None:
    fixture = recording.load(FIXTURE)
    assert fixture.num_rows == 5000
    bundled = recording.load(recording.bundled(), start_ns=RTH_OPEN_NS).slice(0, 5000)
    assert fixture.equals(bundled)
