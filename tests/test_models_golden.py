"""Every model on the bundled real recordings: the exact orders, and where they filled.

Each model runs through :mod:`tradeday.backtest` (the session's engine, risk gate,
simulated broker and book, no feed). Expected orders are written out where they are few,
and recomputed from the raw recording by an independent implementation (numpy/pandas)
where they are many, with their count and first orders pinned. The last test runs a real
Prefect session over the replay server and checks it produces exactly the backtest's rows.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest

from flows.session import trading_session
from tradeday import backtest, history, recording
from tradeday.calendar import session_window
from tradeday.config import parse_session_config
from tradeday.events import NS_PER_S, datetime_to_ns
from tradeday.ledger import Ledger

ES_DAY = date(2013, 9, 3)  # ES trades, 13:30 to 18:51:44 UTC (where the recording ends)
BARS_DAY = date(2023, 1, 9)  # AAPL/MSFT/NVDA/IBM minute bars, 14:30-21:00 UTC
BAR_SYMBOLS = ["AAPL", "MSFT", "NVDA", "IBM"]  # tape order within a minute
MIN = 60 * NS_PER_S


def ns(text: str) -> int:
    return datetime_to_ns(datetime.fromisoformat(text))


def rows(result: backtest.BacktestResult) -> list[tuple]:
    return [(o.symbol, o.side, o.qty, o.ts, o.purpose) for o in result.orders]


def frame(day: date, kind: str) -> pd.DataFrame:
    """The day's regular-hours rows of the bundled recording, read independently."""
    w = session_window(day)
    table = recording.load(recording.bundled(day), start_ns=w.open_ns, end_ns=w.close_ns)
    df = table.to_pandas()
    return df[df.kind == kind].reset_index(drop=True)


def next_bar_open(bars: pd.DataFrame, symbol: str, ts: int) -> float:
    later = bars[(bars.symbol == symbol) & (bars.ts > ts)]
    return float(later.iloc[0].open)


def targets_to_orders(signals: list[tuple[str, int, int]], size: int) -> list[tuple]:
    """(symbol, ts, target sign) changes -> the orders that move each position there."""
    held: dict[str, int] = {}
    out = []
    for symbol, ts, sign in signals:
        delta = sign * size - held.get(symbol, 0)
        held[symbol] = sign * size
        if delta:
            out.append((symbol, "buy" if delta > 0 else "sell", abs(delta), ts, "model"))
    return out


def tape_order(signals: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return sorted(
        signals, key=lambda s: (s[1], BAR_SYMBOLS.index(s[0]) if s[0] in BAR_SYMBOLS else 0)
    )


# -- volume_modulo (seeds 000/001) ---------------------------------------------------------


def test_volume_modulo_on_a_whole_es_day():
    result = backtest.run("volume_modulo", ES_DAY, ["ES"], broker={"starting_cash": 1e9})
    trades = frame(ES_DAY, "t")
    expected = [
        ("ES", "sell" if size % 17 == 0 else "buy", 5, int(ts), "model")
        for size, ts in zip(trades["size"], trades.ts, strict=True)
        if size % 17 == 0 or size % 31 == 0
    ]
    model_rows = [r for r in rows(result) if r[4] == "model"]
    assert model_rows == expected
    assert len(expected) == 1_306
    assert expected[:3] == [
        ("ES", "sell", 5, ns("2013-09-03T13:30:00.040+00:00"), "model"),
        ("ES", "sell", 5, ns("2013-09-03T13:30:00.110+00:00"), "model"),
        ("ES", "sell", 5, ns("2013-09-03T13:30:00.115+00:00"), "model"),
    ]
    assert result.book.open_positions() == {}
    assert all(o.status == "filled" for o in result.orders)


# -- opening_momentum (seed 002) -----------------------------------------------------------


def test_opening_momentum_on_es_shorts_a_flat_first_half_hour():
    result = backtest.run("opening_momentum", ES_DAY, ["ES"])
    # open 1646.50 at 13:30:00.040; 1646.75 at 14:00:00.061 is +0.015%: not above +1%
    assert rows(result) == [
        ("ES", "sell", 100, ns("2013-09-03T14:00:00.061+00:00"), "model"),
        ("ES", "buy", 100, ns("2013-09-03T18:51:44.578+00:00"), "flatten"),  # end of data
    ]
    # filled at the next print (1646.75), flattened at the last one (1631.25)
    assert [(f.price, f.ts) for f in result.fills] == [
        (1646.75, ns("2013-09-03T14:00:00.061+00:00")),
        (1631.25, ns("2013-09-03T18:51:44.578+00:00")),
    ]
    assert result.book.net() == 1550.0


def test_opening_momentum_on_bars_buys_the_movers_and_exits_before_the_close():
    result = backtest.run("opening_momentum", BARS_DAY)
    decide, leave = ns("2023-01-09T15:00:00+00:00"), ns("2023-01-09T20:45:00+00:00")
    # 10:00 New York vs the open: AAPL +0.57%, MSFT +1.04%, NVDA +3.12%, IBM +0.15%
    assert rows(result) == [
        ("AAPL", "sell", 100, decide, "model"),
        ("MSFT", "buy", 100, decide, "model"),
        ("NVDA", "buy", 100, decide, "model"),
        ("IBM", "sell", 100, decide, "model"),
        ("AAPL", "buy", 100, leave, "model"),
        ("MSFT", "sell", 100, leave, "model"),
        ("NVDA", "sell", 100, leave, "model"),
        ("IBM", "buy", 100, leave, "model"),
    ]
    bars = frame(BARS_DAY, "b")
    for symbol in BAR_SYMBOLS:
        sym = bars[bars.symbol == symbol]
        first, at_ten = sym.iloc[0].open, sym[sym.ts >= decide].iloc[0].open
        went_up = at_ten > first * 1.01
        assert next(o.side for o in result.orders if o.symbol == symbol) == (
            "buy" if went_up else "sell"
        )
    # every order filled at the open of the next bar
    for order in result.orders:
        assert order.avg_fill_price == next_bar_open(bars, order.symbol, order.ts)
    assert result.book.open_positions() == {}
    assert round(result.book.net(), 6) == -29.499


# -- moody_trader (seed 002) ---------------------------------------------------------------


def test_moody_trader_on_es_in_daylight_saving_time():
    result = backtest.run("moody_trader", ES_DAY, ["ES"])
    assert rows(result) == [
        ("ES", "buy", 50, ns("2013-09-03T13:30:00.040+00:00"), "model"),  # 09:30 EDT
        ("ES", "sell", 100, ns("2013-09-03T16:00:00.459+00:00"), "model"),  # first print ≥ 12:00
        ("ES", "buy", 50, ns("2013-09-03T18:51:44.578+00:00"), "flatten"),  # data ends first
    ]
    assert [f.price for f in result.fills] == [1646.5, 1638.0, 1631.25]
    assert result.book.net() == -87.5


def test_moody_trader_on_bars_in_winter_time():
    result = backtest.run("moody_trader", BARS_DAY)
    opened, swing, calm = (
        ns("2023-01-09T14:30:00+00:00"),
        ns("2023-01-09T17:00:00+00:00"),  # 12:00 EST
        ns("2023-01-09T20:45:00+00:00"),  # 15 minutes before the 16:00 close
    )
    assert rows(result) == (
        [(s, "buy", 50, opened, "model") for s in BAR_SYMBOLS]
        + [(s, "sell", 100, swing, "model") for s in BAR_SYMBOLS]
        + [(s, "buy", 50, calm, "model") for s in BAR_SYMBOLS]
    )
    bars = frame(BARS_DAY, "b")
    for order in result.orders:
        assert order.avg_fill_price == next_bar_open(bars, order.symbol, order.ts)
    assert round(result.book.net(), 6) == 1069.25


# -- mean_reversion (seeds 003/004) --------------------------------------------------------


def mean_reversion_reference(
    obs: pd.DataFrame, lookback: int, entry: float, exit_: float
) -> list[tuple[str, int, int]]:
    """The rule of MeanReversionParams' docstring, in floating point numpy.

    Rolling sums of prices shifted by the first one: exact for ES's quarter points.
    """
    signals = []
    for symbol, g in obs.groupby("symbol", sort=False):
        prices, stamps = g.price.to_numpy(), g.ts.to_numpy()
        shifted = prices - prices[0]
        s1 = np.concatenate([[0.0], np.cumsum(shifted)])
        s2 = np.concatenate([[0.0], np.cumsum(shifted * shifted)])
        n = lookback
        sums, sumsq = s1[n:] - s1[:-n], s2[n:] - s2[:-n]
        means = sums / n
        stds = np.sqrt(np.maximum(sumsq / n - means * means, 0.0))
        zs = (shifted[n - 1 :] - means) / np.where(stds < 1e-9, np.nan, stds)
        target = 0
        for k, z in enumerate(zs.tolist()):
            if z != z:  # nan: a flat window gives no signal
                continue
            new = target
            if (new > 0 and z >= -exit_) or (new < 0 and z <= exit_):
                new = 0
            if new == 0:
                new = 1 if z <= -entry else -1 if z >= entry else 0
            if new != target:
                target = new
                signals.append((symbol, int(stamps[k + n - 1]), new))
    return tape_order(signals)


def test_mean_reversion_on_bars_matches_an_independent_implementation():
    result = backtest.run("mean_reversion", BARS_DAY)
    bars = frame(BARS_DAY, "b")
    close_out = session_window(BARS_DAY).close_ns - 15 * MIN
    obs = bars[bars.ts < close_out][["symbol", "ts", "close"]].rename(columns={"close": "price"})
    expected = targets_to_orders(mean_reversion_reference(obs, 60, 2.0, 0.5), 10)
    model_rows = [r for r in rows(result) if r[3] < close_out]
    assert model_rows == expected
    assert len(expected) == 36
    assert expected[:3] == [
        ("IBM", "sell", 10, ns("2023-01-09T15:37:00+00:00"), "model"),
        ("MSFT", "sell", 10, ns("2023-01-09T15:39:00+00:00"), "model"),
        ("MSFT", "buy", 10, ns("2023-01-09T15:58:00+00:00"), "model"),
    ]
    # what is still open at 20:45 is closed out by the model itself, at 20:45
    assert [r for r in rows(result) if r[3] >= close_out] == [
        (s, side, 10, close_out, "model") for s, side in closing_sides(expected)
    ]
    assert result.book.open_positions() == {}


def closing_sides(orders: list[tuple]) -> list[tuple[str, str]]:
    held: dict[str, int] = {}
    for symbol, side, qty, _, _ in orders:
        held[symbol] = held.get(symbol, 0) + (qty if side == "buy" else -qty)
    return [(s, "sell" if held[s] > 0 else "buy") for s in BAR_SYMBOLS if held.get(s)]


def test_mean_reversion_on_es_trades():
    params = {"name": "mean_reversion", "lookback": 2000, "entry_z": 3, "trade_size": 1}
    result = backtest.run(params, ES_DAY, ["ES"])
    trades = frame(ES_DAY, "t")
    expected = targets_to_orders(mean_reversion_reference(trades, 2000, 3.0, 0.5), 1)
    assert [r for r in rows(result) if r[4] == "model"] == expected
    assert len(expected) == 210
    assert expected[0] == ("ES", "sell", 1, ns("2013-09-03T13:31:07.261+00:00"), "model")


# -- ma_crossover (seeds 003/004) ----------------------------------------------------------


def ma_crossover_reference(obs: pd.DataFrame, fast: int, slow: int) -> list[tuple[str, int, int]]:
    """Crossings of the fast over the slow simple average, from cumulative sums."""
    signals = []
    for symbol, g in obs.groupby("symbol", sort=False):
        units = [round(p * 1_000_000) for p in g.price]
        sums = np.concatenate([[0], np.cumsum(np.array(units, dtype=object))])
        stamps = g.ts.to_numpy()
        trend = 0
        for i in range(slow - 1, len(units)):
            diff = (sums[i + 1] - sums[i + 1 - fast]) * slow - (
                sums[i + 1] - sums[i + 1 - slow]
            ) * fast
            now = (diff > 0) - (diff < 0)
            if now in (0, trend):
                continue
            if trend != 0:
                signals.append((symbol, int(stamps[i]), now))
            trend = now
    return tape_order(signals)


def test_ma_crossover_on_bars_matches_an_independent_implementation():
    result = backtest.run("ma_crossover", BARS_DAY)
    bars = frame(BARS_DAY, "b")
    close_out = session_window(BARS_DAY).close_ns - 15 * MIN
    obs = bars[bars.ts < close_out][["symbol", "ts", "close"]].rename(columns={"close": "price"})
    expected = targets_to_orders(ma_crossover_reference(obs, 10, 30), 10)
    assert [r for r in rows(result) if r[3] < close_out] == expected
    assert len(expected) == 53
    assert expected[:3] == [
        ("MSFT", "sell", 10, ns("2023-01-09T15:17:00+00:00"), "model"),
        ("NVDA", "sell", 10, ns("2023-01-09T15:20:00+00:00"), "model"),
        ("MSFT", "buy", 20, ns("2023-01-09T15:31:00+00:00"), "model"),
    ]
    assert [r for r in rows(result) if r[3] >= close_out] == [
        (s, side, 10, close_out, "model") for s, side in closing_sides(expected)
    ]


def test_ma_crossover_on_es_trades():
    params = {"name": "ma_crossover", "fast_window": 500, "slow_window": 2000, "shares": 1}
    result = backtest.run(params, ES_DAY, ["ES"])
    expected = targets_to_orders(ma_crossover_reference(frame(ES_DAY, "t"), 500, 2000), 1)
    model_rows = [r for r in rows(result) if r[4] == "model"]
    assert model_rows == expected
    assert len(expected) == 195
    assert expected[:2] == [
        ("ES", "sell", 1, ns("2013-09-03T13:31:34.212+00:00"), "model"),
        ("ES", "buy", 2, ns("2013-09-03T13:32:30.712+00:00"), "model"),
    ]
    assert result.book.open_positions() == {}


# -- the same through a real session -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_replay_session_writes_exactly_the_backtests_orders_and_fills(session_paths):
    model = {"name": "ma_crossover", "fast_window": 5, "slow_window": 20}
    config = parse_session_config(
        {"model": model, "symbols": BAR_SYMBOLS, "broker": {"slippage_bps": 2.0}, **session_paths}
    )
    result = trading_session(config=config, session_date=BARS_DAY)
    # a session warms the model up on the recording's bars before the open: so does this
    before_open = history.recorded(
        recording.bundled(BARS_DAY), BAR_SYMBOLS, session_window(BARS_DAY)
    )
    expected = backtest.run(
        model, BARS_DAY, BAR_SYMBOLS, broker={"slippage_bps": 2.0}, warmup=before_open
    )
    assert len(expected.orders) == 100  # 99 without the warm-up

    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(result["run_id"])
    fills = ledger.fills(result["run_id"])
    ledger.close()
    seq = lambda o: int(o.client_order_id.rsplit("-", 1)[1])  # noqa: E731
    assert [
        (o.symbol, o.side, o.qty, o.ts, o.purpose, o.status, o.avg_fill_price)
        for o in sorted(orders, key=seq)
    ] == [
        (o.symbol, o.side, o.qty, o.ts, o.purpose, o.status, o.avg_fill_price)
        for o in expected.orders
    ]
    assert [(f.symbol, f.side, f.qty, f.price, f.ts) for f in fills] == [
        (f.symbol, f.side, f.qty, f.price, f.ts) for f in expected.fills
    ]
    assert result["net"] == round(expected.book.net(), 6)
    assert result["final_positions"] == {}
