"""Average-cost P&L against hand-computed sequences: longs, shorts, flips, partial closes, fees.

Every expected number below was worked out by hand (shown in the comments); the report's
per-minute equity, drawdown and Sharpe are checked the same way on a small ledger.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pytest

from tradeday.book import Book, Position
from tradeday.events import Side
from tradeday.ledger import Ledger
from tradeday.records import Batch, FillRecord, MarkRecord, PositionRecord
from tradeday.report import drawdown_and_sharpe, write_report

CENT = 1e-9  # "to the cent", with room only for float representation


def approx(value: float) -> object:
    return pytest.approx(value, abs=CENT)


def test_long_adds_then_closes_in_two_parts_with_fees():
    book = Book()
    book.apply_fill("X", 100, 10.00, 1.00)
    book.apply_fill("X", 50, 10.30, 0.50)
    p = book.positions["X"]
    assert (p.qty, p.avg_price) == (150, approx(10.10))  # (1000 + 515) / 150
    assert book.apply_fill("X", -60, 10.50, 0.60) == approx(24.00)  # 0.40 * 60
    assert (p.qty, p.avg_price) == (90, approx(10.10))  # a partial close keeps the average
    assert p.unrealized(10.20) == approx(9.00)  # 0.10 * 90
    assert book.net({"X": 10.20}) == approx(30.90)  # 24 + 9 - 2.10
    assert book.apply_fill("X", -90, 9.90, 0.90) == approx(-18.00)  # -0.20 * 90
    assert (p.qty, p.avg_price) == (0, 0.0)
    assert p.realized == approx(6.00)
    assert p.fees == approx(3.00)
    assert book.net() == approx(3.00)
    assert book.cash == approx(3.00)  # -1001 - 515.50 + 629.40 + 890.10
    assert (p.trades, p.turnover, p.closes, p.wins) == (4, approx(3036.00), 2, 1)


def test_short_adds_then_covers():
    p = Position()
    p.apply(-200, 50.00)
    p.apply(-100, 53.00)
    assert (p.qty, p.avg_price) == (-300, approx(51.00))  # (10000 + 5300) / 300
    assert p.unrealized(52.00) == approx(-300.00)  # (52 - 51) * -300
    assert p.apply(50, 49.00) == approx(100.00)  # short from 51, covered at 49: +2 * 50
    assert (p.qty, p.avg_price) == (-250, approx(51.00))
    assert p.apply(250, 52.50) == approx(-375.00)  # -1.50 * 250
    assert (p.qty, p.realized, p.closes, p.wins) == (0, approx(-275.00), 2, 1)


def test_flip_long_to_short_and_back():
    book = Book()
    book.apply_fill("X", 100, 20.00, 1.00)
    # sells 250: closes the 100 long at +1.00 each, opens 150 short at 21.00
    assert book.apply_fill("X", -250, 21.00, 2.50) == approx(100.00)
    p = book.positions["X"]
    assert (p.qty, p.avg_price) == (-150, approx(21.00))
    assert p.unrealized(20.00) == approx(150.00)  # (20 - 21) * -150
    assert book.apply_fill("X", 150, 20.50, 1.50) == approx(75.00)  # 0.50 * 150
    assert (p.realized, p.fees, book.net()) == (approx(175.00), approx(5.00), approx(170.00))
    assert book.cash == approx(170.00)  # -2001 + 5247.50 - 3076.50

    q = Position()
    q.apply(-10, 5.00)
    assert q.apply(30, 4.00) == approx(10.00)  # covers 10 at +1.00, opens 20 long at 4.00
    assert (q.qty, q.avg_price) == (20, approx(4.00))
    assert q.apply(-20, 3.50) == approx(-10.00)
    assert (q.qty, q.realized, q.closes, q.wins) == (0, approx(0.00), 2, 1)


def test_partial_closes_keep_the_average_cost():
    p = Position()
    p.apply(10, 100.00)
    p.apply(10, 110.00)
    assert p.avg_price == approx(105.00)
    assert p.apply(-5, 120.00) == approx(75.00)  # 15 * 5
    assert p.apply(-5, 100.00) == approx(-25.00)  # -5 * 5
    assert (p.qty, p.avg_price) == (10, approx(105.00))
    assert p.unrealized(90.00) == approx(-150.00)  # -15 * 10
    assert (p.realized, p.closes, p.wins) == (approx(50.00), 2, 1)


def test_fees_make_a_flat_round_trip_a_loss_and_no_win():
    book = Book()
    book.apply_fill("X", 1, 10.00, 0.35)
    book.apply_fill("X", -1, 10.00, 0.35)
    p = book.positions["X"]
    assert (p.realized, p.fees, book.net(), book.cash) == (
        0.0,
        approx(0.70),
        approx(-0.70),
        approx(-0.70),
    )
    assert (p.closes, p.wins) == (1, 0)  # a win is a close with realized P&L > 0 before fees


def test_real_es_prices_to_the_cent():
    # E-mini prints from 2013-09-03 (quarter-point ticks), P&L in index points x contracts
    book = Book()
    book.apply_fill("ES", 5, 1640.25)
    book.apply_fill("ES", 5, 1640.75)
    book.apply_fill("ES", -5, 1641.00)  # avg 1640.50: +0.50 * 5
    book.apply_fill("ES", -10, 1639.75)  # closes 5 at -0.75 * 5, opens 5 short at 1639.75
    assert book.realized == approx(2.50 - 3.75)
    assert book.positions["ES"].qty == -5
    assert book.unrealized({"ES": 1639.25}) == approx(2.50)  # 0.50 * 5 short


def test_drawdown_and_sharpe_by_hand():
    # equity 4, -11, 8, 8 after a start at 0: peak 4, trough -11
    drawdown, sharpe = drawdown_and_sharpe([4.0, -11.0, 8.0, 8.0])
    assert drawdown == approx(15.0)
    # changes 4, -15, 19, 0: mean 2, sample variance (4 + 289 + 289 + 4) / 3
    assert sharpe == pytest.approx(2 / math.sqrt(586 / 3) * math.sqrt(252 * 390), rel=1e-12)
    assert drawdown_and_sharpe([]) == (None, None)
    assert drawdown_and_sharpe([5.0]) == (0.0, None)  # one change: no spread
    assert drawdown_and_sharpe([0.0, 0.0, 0.0]) == (0.0, None)  # never varies
    assert drawdown_and_sharpe([-3.0, -1.0])[0] == approx(3.0)  # below the start counts


T0 = 1_672_756_200_000_000_000  # 2023-01-03 14:30 UTC, the open
MIN = 60_000_000_000


def _fill(
    coid: str, symbol: str, side: str, qty: int, price: float, fee: float, ts: int
) -> FillRecord:
    return FillRecord(
        run_id="r1",
        model="m",
        client_order_id=coid,
        symbol=symbol,
        side=Side(side),
        qty=qty,
        price=price,
        fee=fee,
        ts=ts,
    )


def test_report_equity_pnl_and_positions_from_a_ledger(tmp_path: Path):
    """Two symbols over four minutes: a long closed with a gain, a short flipped and left open."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.start_run(
        run_id="r1",
        session_date="2023-01-03",
        model="m",
        params={},
        symbols=["X", "Y"],
        feed="replay",
        broker="simulated",
        started_ns=T0,
        heartbeat_ns=T0,
        counters={"ticks": 9},
    )
    batch = Batch()
    batch.fills = [
        _fill("c1", "X", "buy", 10, 100.00, 1.00, T0 + 5),  # minute 0
        _fill("c2", "Y", "sell", 20, 50.00, 0.20, T0 + MIN + 7),  # minute 1
        _fill("c3", "X", "sell", 10, 101.00, 1.00, T0 + 2 * MIN + 5),  # minute 2: +10
        _fill("c4", "Y", "buy", 30, 49.00, 0.30, T0 + 3 * MIN + 1),  # minute 3: +20, long 10
    ]
    batch.marks = [
        MarkRecord("r1", "X", T0, 100.50),
        MarkRecord("r1", "X", T0 + MIN, 99.00),
        MarkRecord("r1", "Y", T0 + MIN, 50.50),
        # minute 2 has no marks (say no trades): X is marked at its fill, Y carried forward
        MarkRecord("r1", "X", T0 + 3 * MIN, 101.25),
        MarkRecord("r1", "Y", T0 + 3 * MIN, 49.40),
    ]
    batch.positions = [
        PositionRecord(
            run_id="r1",
            symbol="X",
            model="m",
            qty=0,
            avg_price=0.0,
            mark=101.25,
            realized=10.0,
            fees=2.0,
            ts=T0 + 3 * MIN,
        ),
        PositionRecord(
            run_id="r1",
            symbol="Y",
            model="m",
            qty=10,
            avg_price=49.0,
            mark=49.40,
            realized=20.0,
            fees=0.5,
            ts=T0 + 3 * MIN,
        ),
    ]
    ledger.write(batch, "r1")
    path = write_report(ledger, "r1", tmp_path / "r.duckdb")
    ledger.close()

    con = duckdb.connect(str(path), read_only=True)
    equity = con.execute(
        "SELECT symbol, epoch(minute)::BIGINT - 1672756200, position, mark, realized, unrealized, "
        "fees, equity FROM equity ORDER BY symbol, minute"
    ).fetchall()
    expected = [
        ("X", 0, 10, 100.50, 0.0, 5.00, 1.00, 4.00),
        ("X", 60, 10, 99.00, 0.0, -10.00, 1.00, -11.00),
        ("X", 120, 0, 101.00, 10.00, 0.0, 2.00, 8.00),
        ("X", 180, 0, 101.25, 10.00, 0.0, 2.00, 8.00),
        ("Y", 0, 0, None, 0.0, 0.0, 0.0, 0.0),
        ("Y", 60, -20, 50.50, 0.0, -10.00, 0.20, -10.20),
        ("Y", 120, -20, 50.50, 0.0, -10.00, 0.20, -10.20),
        ("Y", 180, 10, 49.40, 20.00, 4.00, 0.50, 23.50),
    ]
    assert len(equity) == len(expected)
    for got, want in zip(equity, expected, strict=True):
        assert got[:3] == want[:3]
        assert got[3] == (None if want[3] is None else approx(want[3]))
        assert got[4:] == tuple(approx(v) for v in want[4:])

    pnl = con.execute(
        "SELECT symbol, realized, unrealized, fees, net, trades, turnover, win_rate, "
        "end_position, wins, closes FROM pnl ORDER BY symbol"
    ).fetchall()
    assert pnl == [
        ("X", approx(10.0), 0.0, approx(2.0), approx(8.0), 2, approx(2010.0), 1.0, 0, 1, 1),
        (
            "Y",
            approx(20.0),
            approx(4.0),
            approx(0.5),
            approx(23.5),
            2,
            approx(2470.0),
            1.0,
            10,
            1,
            1,
        ),
    ]
    assert con.execute(
        "SELECT symbol, qty, market_value, unrealized FROM positions_eod ORDER BY symbol"
    ).fetchall() == [("X", 0, 0.0, 0.0), ("Y", 10, approx(494.0), approx(4.0))]
    # session curve 4 - 0, -11 - 10.20, 8 - 10.20, 8 + 23.50
    curve = [4.00, -21.20, -2.20, 31.50]
    assert [
        r[0] for r in con.execute("SELECT equity FROM session_equity ORDER BY minute").fetchall()
    ] == [approx(v) for v in curve]
    drawdown, sharpe = con.execute("SELECT max_drawdown, sharpe FROM sessions").fetchone()
    assert drawdown == approx(25.20)  # from the peak 4.00 to -21.20
    changes = [4.00, -25.20, 19.00, 33.70]
    mean = sum(changes) / 4
    std = math.sqrt(sum((c - mean) ** 2 for c in changes) / 3)
    assert sharpe == pytest.approx(mean / std * math.sqrt(252 * 390), rel=1e-9)
    assert con.execute("SELECT net, win_rate FROM daily_summary").fetchone() == (
        approx(31.50),
        1.0,
    )
    con.close()
