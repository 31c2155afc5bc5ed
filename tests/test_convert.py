"""Own data in: `tradeday convert` and the recording functions for bar and trade CSVs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tradeday import backtest, recording
from tradeday.cli import main


def ns(text: str) -> int:
    return int(pd.Timestamp(text).value)


BARS_WITH_OFFSET = """datetime,open,high,low,close,volume
2023-01-05 09:30:00-05:00,127.13,127.50,127.00,127.40,1200
2023-01-05 09:31:00-05:00,127.40,127.90,127.30,127.80,900
2023-01-05 09:32:00-05:00,127.80,127.85,127.10,127.20,1500
"""


def test_convert_bars_labelled_at_start_with_an_offset(tmp_path, capsys):
    csv = tmp_path / "aapl.csv"
    csv.write_text(BARS_WITH_OFFSET)
    out = tmp_path / "aapl.parquet"
    assert main(["convert", str(csv), "--out", str(out), "--symbol", "AAPL"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {out}: 3 bars of AAPL on 2023-01-05 (New York dates)"
    )
    table = recording.load(out)
    assert table["ts"].to_pylist() == [
        ns("2023-01-05T14:30:00Z"),
        ns("2023-01-05T14:31:00Z"),
        ns("2023-01-05T14:32:00Z"),
    ]
    assert table["kind"].to_pylist() == ["b"] * 3
    assert table["close"].to_pylist() == [127.40, 127.80, 127.20]
    assert table["volume"].to_pylist() == [1200, 900, 1500]
    assert table["price"].null_count == 3


def test_bars_labelled_at_end_in_new_york_wall_time_across_dst(tmp_path):
    csv = tmp_path / "spy.csv"
    csv.write_text(
        "timestamp,symbol,o,h,l,c,v,vw\n"
        "2024-03-08 09:31:00,SPY,510.0,510.5,509.9,510.2,100,510.1\n"
        "2024-03-11 09:31:00,SPY,511.0,511.5,510.9,511.2,200,511.1\n"
    )
    table = recording.from_bars_csv(csv, tz="America/New_York", label="end")
    assert table["ts"].to_pylist() == [ns("2024-03-08T14:30:00Z"), ns("2024-03-11T13:30:00Z")]
    assert table["symbol"].to_pylist() == ["SPY", "SPY"]
    assert table["vwap"].to_pylist() == [510.1, 511.1]
    five = recording.from_bars_csv(csv, tz="America/New_York", label="end", interval="5min")
    assert five["ts"].to_pylist()[0] == ns("2024-03-08T14:26:00Z")


def test_converted_bars_replay_through_a_model(tmp_path):
    csv = tmp_path / "aapl.csv"
    csv.write_text(BARS_WITH_OFFSET)
    path = recording.write(recording.from_bars_csv(csv, symbol="AAPL"), tmp_path / "a.parquet")
    result = backtest.run(
        {"name": "moody_trader", "lot_size": 7}, "2023-01-05", ["AAPL"], recording=path
    )
    assert result.stats.events == 3
    assert result.model_orders() == [("AAPL", "buy", 7, ns("2023-01-05T14:30:00Z"))]
    assert result.book.qty("AAPL") == 0  # flattened at the end of the data


def test_convert_trades_with_epoch_milliseconds(tmp_path, capsys):
    csv = tmp_path / "trades.csv"
    csv.write_text(
        "ts,symbol,price,size\n1672929000120,AAPL,127.13,100\n1672929000480,AAPL,127.15,31\n"
    )
    out = tmp_path / "t.parquet"
    assert main(["convert", str(csv), "--out", str(out), "--unit", "ms"]) == 0
    assert "2 trades of AAPL on 2023-01-05" in capsys.readouterr().out
    assert recording.load(out)["ts"].to_pylist() == [
        ns("2023-01-05T14:30:00.120Z"),
        ns("2023-01-05T14:30:00.480Z"),
    ]


def test_convert_naive_times_need_a_tz_and_the_error_says_so(tmp_path):
    csv = tmp_path / "naive.csv"
    csv.write_text("time,open,high,low,close,volume\n2023-01-05 09:30:00,1,1,1,1,1\n")
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(csv), "--out", str(tmp_path / "x.parquet"), "--symbol", "X"])
    assert "without a UTC offset" in str(exc.value) and "--tz" in str(exc.value)
    assert not (tmp_path / "x.parquet").exists()


def test_convert_names_what_a_csv_lacks(tmp_path):
    csv = tmp_path / "odd.csv"
    csv.write_text("when,bid,ask\n1,2,3\n")
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(csv), "--out", str(tmp_path / "x.parquet")])
    assert "neither trades" in str(exc.value) and "ask, bid, when" in str(exc.value)
    bars = tmp_path / "bars.csv"
    bars.write_text("date,open,high,low,close,volume\n2023-01-05,1,1,1,1,1\n")
    with pytest.raises(ValueError, match="time column named one of ts, time, timestamp"):
        recording.from_bars_csv(bars, symbol="X")


@pytest.mark.parametrize(
    ("as_unit", "unit", "factor"),
    [
        (None, "microseconds", "1,000"),  # pandas 3 parses to µs: astype(int64) gives µs
        ("ms", "milliseconds", "1,000,000"),
        ("s", "seconds", "1,000,000,000"),
    ],
)
def test_write_refuses_timestamps_in_the_wrong_unit(tmp_path, as_unit, unit, factor):
    times = pd.Series(pd.to_datetime(["2023-01-05 14:30:00", "2023-01-05 14:31:00"], utc=True))
    wrong = times.dt.as_unit(as_unit) if as_unit else times
    df = pd.DataFrame(
        {"ts": wrong.astype("int64"), "symbol": "AAPL", "kind": "t", "price": 1.0, "size": 1}
    )
    with pytest.raises(ValueError, match=f"look like epoch {unit}: multiply by {factor} "):
        recording.write(df, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()
    df["ts"] = times.dt.as_unit("ns").astype("int64")  # the fix the message gives
    assert recording.load(recording.write(df, tmp_path / "ok.parquet"))["ts"].to_pylist() == [
        ns("2023-01-05T14:30:00Z"),
        ns("2023-01-05T14:31:00Z"),
    ]


def test_write_refuses_timestamps_beyond_any_unit(tmp_path):
    df = pd.DataFrame({"ts": [7], "symbol": ["A"], "kind": ["t"], "price": [1.0], "size": [1]})
    with pytest.raises(ValueError, match="expected UTC nanoseconds between 1980 and 2100"):
        recording.write(df, tmp_path / "bad.parquet")


def test_demo_refuses_a_day_its_recording_does_not_hold(tmp_path):
    csv = tmp_path / "aapl.csv"
    csv.write_text(BARS_WITH_OFFSET)
    path = recording.write(recording.from_bars_csv(csv, symbol="AAPL"), tmp_path / "a.parquet")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"feed": {"recording": str(path)}, "symbols": ["AAPL"]}))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--date", "2023-01-06", "--config", str(config)])
    assert "2023-01-06 is not in" in str(exc.value) and "2023-01-05" in str(exc.value)
