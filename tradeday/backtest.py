"""Run a model over a recorded day without a feed, a server or Prefect.

It drives the same :class:`~tradeday.engine.Engine`, risk gate, simulated broker and book
a session uses, over the same events the replay server would stream for that day (the
session's window, the session's subscriptions), stops at the same time, and flattens the
same way, so its orders and fills are what a replay session with the same parameters
produces. Use it to test a model on recorded data (docs/models.md)::

    from tradeday import backtest

    result = backtest.run({"name": "ma_crossover", "fast_window": 5}, "2023-01-09", ["AAPL"])
    for order in result.orders:
        print(order.time, order.side, order.qty, order.symbol, order.tag)
    print(result.book.net())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from models.base import ModelParams, overnight_allowance
from tradeday import recording as recordings
from tradeday import wiring
from tradeday.book import Book
from tradeday.brokers.base import Broker
from tradeday.calendar import MarketClosed, session_window
from tradeday.config import SessionConfig, parse_session_config
from tradeday.engine import Engine, EngineStats
from tradeday.events import Bar, SessionWindow
from tradeday.records import FillRecord, OrderRecord, RiskEventRecord
from tradeday.sources import ReplaySource

RUN_ID = "backtest"


@dataclass
class BacktestResult:
    """What a session would have written to the ledger, plus the final book."""

    config: SessionConfig
    window: SessionWindow
    orders: list[OrderRecord]
    fills: list[FillRecord]
    risk_events: list[RiskEventRecord]
    book: Book
    stats: EngineStats
    stop_reason: str
    broker: Broker

    @property
    def carried(self) -> dict[str, tuple[int, float, float]]:
        """What the session ended holding: symbol -> (quantity, average cost, last mark)."""
        return {
            symbol: (p.qty, p.avg_price, self.book.marks.get(symbol, p.avg_price))
            for symbol, p in self.book.positions.items()
            if p.qty
        }

    def model_orders(self) -> list[tuple[str, str, int, int]]:
        """(symbol, side, qty, tick time ns) of the model's own orders, in the order sent."""
        return [(o.symbol, o.side, o.qty, o.ts) for o in self.orders if o.purpose == "model"]


@dataclass
class MultiDayResult:
    """One :class:`BacktestResult` per session of a :func:`run_days`, in order."""

    days: list[BacktestResult]

    def nights(self) -> list[tuple[date, date, str, int, float]]:
        """(day, next day, symbol, quantity, P&L) of every position carried overnight: from
        the day's last mark to the next day's first fills that close it (fees excluded)."""
        out = []
        for before, after in pairwise(self.days):
            for symbol, (qty, _cost, mark) in before.carried.items():
                closing = "sell" if qty > 0 else "buy"
                left, pnl = abs(qty), 0.0
                for fill in after.fills:
                    if left and fill.symbol == symbol and fill.side == closing:
                        part = min(left, fill.qty)
                        pnl += part * (fill.price - mark) * (1 if qty > 0 else -1)
                        left -= part
                out.append((before.window.day, after.window.day, symbol, abs(qty) - left, pnl))
        return out


def run(
    model: ModelParams | dict[str, Any] | str,
    day: date | str,
    symbols: Sequence[str] | None = None,
    *,
    recording: str | Path | None = None,
    risk: dict[str, Any] | None = None,
    broker: dict[str, Any] | None = None,
    close_buffer_minutes: float = 5.0,
    warmup: Sequence[Bar] = (),
) -> BacktestResult:
    """Trade ``day`` of ``recording`` (default: the recorded day's, ``recording.recorded``).

    ``model`` is a model's params, or their dict, or just a model name; ``symbols``
    default to every symbol the recording has that day; ``risk``/``broker`` are the
    session's ``risk``/``broker`` parameters (simulated only). Parameters are validated
    exactly as a session's are: a bad one raises :class:`~tradeday.config.ConfigError`
    naming the field. ``warmup`` bars go to the model's ``warmup`` before the open.
    """
    day = date.fromisoformat(day) if isinstance(day, str) else day
    window = session_window(day)
    config = _config(model, window, symbols, recording, risk, broker, close_buffer_minutes)
    return run_config(config, window, warmup=warmup)


def run_days(
    model: ModelParams | dict[str, Any] | str,
    first: date | str,
    last: date | str,
    symbols: Sequence[str],
    *,
    recording: str | Path | None = None,
    risk: dict[str, Any] | None = None,
    broker: dict[str, Any] | None = None,
    close_buffer_minutes: float = 5.0,
) -> MultiDayResult:
    """Trade every exchange session from ``first`` to ``last`` with one simulated account.

    Each session is what :func:`run` does for its day, with a fresh model instance, book
    and risk gate (as a session has), except that what the model may hold overnight (its
    params' ``max_overnight_position``) stays open at the session's end and opens the next
    session's book at its cost, where ``before_open`` sees it; only the excess is
    flattened. The simulated broker, its cash and positions, carry over.
    """
    first = date.fromisoformat(first) if isinstance(first, str) else first
    last = date.fromisoformat(last) if isinstance(last, str) else last
    if last < first:
        raise ValueError(f"last ({last}) is before first ({first})")
    days: list[BacktestResult] = []
    account: Broker | None = None
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        try:
            window = session_window(day)
        except MarketClosed:
            continue
        config = _config(model, window, symbols, recording, risk, broker, close_buffer_minutes)
        carried = days[-1].carried if days else {}
        result = run_config(config, window, account=account, carried=carried)
        account = result.broker
        days.append(result)
    if not days:
        raise ValueError(f"no exchange session from {first} to {last}")
    return MultiDayResult(days)


def _config(
    model: ModelParams | dict[str, Any] | str,
    window: SessionWindow,
    symbols: Sequence[str] | None,
    recording: str | Path | None,
    risk: dict[str, Any] | None,
    broker: dict[str, Any] | None,
    close_buffer_minutes: float,
) -> SessionConfig:
    """The session parameters of one backtested day, validated as a session's are."""
    path = Path(recording) if recording is not None else recordings.recorded(window.day)
    if symbols is None:
        table = recordings.load(path, start_ns=window.open_ns, end_ns=window.close_ns)
        symbols = sorted(set(table.column("symbol").to_pylist()))
    raw_model: Any = {"name": model} if isinstance(model, str) else model
    return parse_session_config(
        {
            "model": raw_model,
            "symbols": list(symbols),
            "feed": {"recording": str(path)},
            "broker": broker or {},
            "risk": risk or {},
            "close_buffer_minutes": close_buffer_minutes,
        }
    )


def run_config(
    config: SessionConfig,
    window: SessionWindow,
    *,
    warmup: Sequence[Bar] = (),
    account: Broker | None = None,
    carried: Mapping[str, tuple[int, float, float]] | None = None,
) -> BacktestResult:
    """:func:`run` for a whole session parameter object and a market window.

    With ``carried`` (symbol -> quantity, cost, mark from the model's last session) and
    that session's simulated ``account``, the session holds overnight what the model may
    (:func:`run_days`); without, it ends flat like :func:`run`.
    """
    if config.broker.kind != "simulated":
        raise ValueError(
            "a backtest trades with the simulated broker; broker.kind must be 'simulated'"
        )
    source = ReplaySource(config.feed, window)
    run_id = RUN_ID if carried is None else f"{RUN_ID}-{window.day:%Y%m%d}"
    parts = wiring.build(config, window, run_id=run_id, broker=account)
    model, engine, broker = parts.model, parts.engine, parts.broker
    source.check(config.symbols, wiring.handled_kinds(model))
    path = source.recording_path()
    for symbol, (qty, cost, mark) in (carried or {}).items():
        parts.book.carry(symbol, qty, cost, mark)
    if warmup:
        model.warmup(warmup)
    engine.start(window, wiring.start_ns(window, tick_clock=True))
    table = recordings.load(
        path, config.symbols, window.open_ns, window.close_ns, parts.subscriptions.kinds
    )
    orders: dict[str, OrderRecord] = {}
    fills: list[FillRecord] = []
    risk_events: list[RiskEventRecord] = []
    for i, (_, event) in enumerate(recordings.events(table)):
        engine.on_events((event,))
        if engine.stop_requested.is_set() and not engine.open_orders():
            break  # the close, or the kill switch once its flatten has filled
        if i % 20_000 == 0:
            _collect(engine, orders, fills, risk_events)  # keeps the engine's memory small
    engine.drain()
    engine.flatten(overnight_allowance(config.model) if carried is not None else 0)
    broker.flush(engine.clock)
    engine.drain()
    _collect(engine, orders, fills, risk_events)
    return BacktestResult(
        config=config,
        window=window,
        orders=sorted(orders.values(), key=lambda o: int(o.client_order_id.rsplit("-", 1)[1])),
        fills=fills,
        risk_events=risk_events,
        book=parts.book,
        stats=engine.stats,
        stop_reason=engine.stop_reason or "end of data",
        broker=broker,
    )


def _collect(
    engine: Engine,
    orders: dict[str, OrderRecord],
    fills: list[FillRecord],
    risk_events: list[RiskEventRecord],
) -> None:
    batch = engine.take_batch()
    for row in batch.new_orders:
        orders[row.client_order_id] = row
    for update in batch.order_updates:
        orders[update.client_order_id].apply(update)
    fills.extend(batch.fills)
    risk_events.extend(batch.risk_events)
