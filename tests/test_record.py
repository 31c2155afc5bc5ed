"""``tradeday record`` through cpquant's REST client against a local HTTP server that
answers in Alpaca's market-data JSON format (Alpaca itself is unreachable here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pyarrow.compute as pc
import pytest

from tradeday import recording
from tradeday.cli import main
from tradeday.decode import parse_rfc3339_ns
from tradeday.events import ns_to_datetime
from tradeday.record import record_day
from tradeday.replay.wire import rfc3339

KEY, SECRET = "data-key", "data-secret"
PAGE = 1_000


def _iso(ns: int) -> str:
    return rfc3339(ns)


class AlpacaDataHandler(BaseHTTPRequestHandler):
    trades: list[dict] = []
    bars: list[dict] = []
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append(url.path)
        if (
            self.headers.get("APCA-API-KEY-ID") != KEY
            or self.headers.get("APCA-API-SECRET-KEY") != SECRET
        ):
            return self._send(401, {"message": "request is not authorized"})
        symbol = q.get("symbols", "").split(",")[0]
        start, end = parse_rfc3339_ns(q["start"]), parse_rfc3339_ns(q["end"])

        def within(row: dict) -> bool:
            return row["S"] == symbol and start <= parse_rfc3339_ns(row["t"]) < end

        if url.path == "/v2/stocks/trades":
            rows = [t for t in self.trades if within(t)]
            offset = int(q.get("page_token") or 0)
            page = rows[offset : offset + PAGE]
            token = str(offset + PAGE) if offset + PAGE < len(rows) else None
            found = (
                {symbol: [{k: v for k, v in t.items() if k != "S"} for t in page]} if page else {}
            )
            return self._send(200, {"trades": found, "next_page_token": token})
        if url.path == "/v2/stocks/bars":
            rows = [{k: v for k, v in b.items() if k != "S"} for b in self.bars if within(b)]
            return self._send(
                200, {"bars": {symbol: rows} if rows else {}, "next_page_token": None}
            )
        self._send(404, {"message": "not found"})

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def alpaca_data(open_fixture) -> Iterator[tuple[str, list[dict]]]:
    table = recording.load(open_fixture, kinds=["t"]).to_pylist()
    trades = [
        {
            "S": "SPY",
            "t": _iso(r["ts"]),
            "x": "V",
            "p": r["price"],
            "s": r["size"],
            "c": ["@"],
            "i": n,
            "z": "B",
        }
        for n, r in enumerate(table, 1)
    ]
    minutes = sorted({r["ts"] - r["ts"] % 60_000_000_000 for r in table})
    bars = [
        {
            "S": "SPY",
            "t": _iso(m),
            "o": 1.0 + i,
            "h": 2.0 + i,
            "l": 0.5 + i,
            "c": 1.5 + i,
            "v": 100 * (i + 1),
            "n": 7,
            "vw": 1.25 + i,
        }
        for i, m in enumerate(minutes)
    ]
    AlpacaDataHandler.trades, AlpacaDataHandler.bars, AlpacaDataHandler.requests = trades, bars, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlpacaDataHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", table
    server.shutdown()
    server.server_close()


def test_record_a_day_through_cpquant_rest(alpaca_data, tmp_path, monkeypatch, capsys):
    url, source = alpaca_data
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    out = tmp_path / "spy.parquet"
    assert (
        main(
            [
                "record",
                "--date",
                "2013-09-03",
                "--symbols",
                "SPY,QQQ",
                "--out",
                str(out),
                "--data-url",
                url,
            ]
        )
        == 0
    )
    table = recording.load(out)
    trades = table.filter(pc.equal(table["kind"], "t")).to_pylist()
    bars = table.filter(pc.equal(table["kind"], "b")).to_pylist()
    assert [(t["ts"], t["price"], t["size"]) for t in trades] == [
        (r["ts"], r["price"], r["size"]) for r in source
    ]
    assert (
        trades[0]["conditions"] == ["@"]
        and trades[0]["exchange"] == "V"
        and trades[0]["trade_id"] == 1
    )
    assert len(bars) == len({r["ts"] - r["ts"] % 60_000_000_000 for r in source})
    assert (bars[0]["open"], bars[0]["close"], bars[0]["volume"], bars[0]["vwap"]) == (
        1.0,
        1.5,
        100,
        1.25,
    )
    # SPY: 5,000 trades in pages of 1,000; QQQ: one empty page
    assert AlpacaDataHandler.requests.count("/v2/stocks/trades") == 6
    assert recording.days(out) == [date(2013, 9, 3)]
    printed = capsys.readouterr().out
    assert (
        "SPY trades: 5,000" in printed
        and "QQQ trades: 0" in printed
        and KEY not in printed
        and SECRET not in printed
    )
    assert ns_to_datetime(trades[0]["ts"]).hour == 13


def test_record_without_keys_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "record",
                "--date",
                "2013-09-03",
                "--symbols",
                "SPY",
                "--out",
                str(tmp_path / "x.parquet"),
            ]
        )
    assert "APCA_API_KEY_ID" in str(exc.value)


def test_record_refuses_a_closed_day(tmp_path, monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "record",
                "--date",
                "2026-11-26",
                "--symbols",
                "SPY",
                "--out",
                str(tmp_path / "x.parquet"),
            ]
        )
    assert "market closed 2026-11-26 (Thanksgiving)" in str(exc.value)


def test_record_reports_progress_after_each_symbol(alpaca_data, tmp_path):
    url, _ = alpaca_data
    seen: list[float] = []
    path, counts = record_day(
        date(2013, 9, 3),
        ["SPY", "QQQ"],
        tmp_path / "r.parquet",
        key_id=KEY,
        secret_key=SECRET,
        base_url=url,
        progress=seen.append,
    )
    assert seen == [0.5, 1.0]
    assert counts["SPY trades"] == 5_000 and path.exists()
