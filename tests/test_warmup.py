"""Sessions warm models up on the bars before the open, exactly as a backtest given them."""

from __future__ import annotations

from datetime import date

from tradeday import backtest, history, recording
from tradeday.calendar import session_window
from tradeday.config import parse_session_config
from tradeday.session import TradingSession

DAY = date(2023, 1, 9)  # a Monday: the warm-up reaches back over the weekend to 2023-01-03


def test_replay_session_warms_up_on_recorded_bars(tmp_path):
    window = session_window(DAY)
    bars = history.recorded(recording.bundled(DAY), ["AAPL"], window)
    assert len(bars) == 4 * 390  # 2023-01-03 .. 2023-01-06, every minute of each session
    assert all(b.ts < window.open_ns for b in bars) and bars == sorted(bars, key=lambda b: b.ts)

    warm = backtest.run("mean_reversion", DAY, ["AAPL"], warmup=bars)
    cold = backtest.run("mean_reversion", DAY, ["AAPL"])
    assert warm.model_orders() != cold.model_orders()  # the warm-up changes what it does

    config = parse_session_config(
        {
            "model": {"name": "mean_reversion"},
            "symbols": ["AAPL"],
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "report_path": str(tmp_path / "r.duckdb"),
        }
    )
    session = TradingSession(config, window)
    try:
        session.run()
    finally:
        session.shutdown("completed")
        session.close()
    orders = session.ledger.orders(session.run_id)
    sent = [(o.symbol, o.side, o.qty, o.ts) for o in orders if o.purpose == "model"]
    assert sent == warm.model_orders()
