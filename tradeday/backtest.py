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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from models.base import ModelParams
from tradeday import recording as recordings
from tradeday import wiring
from tradeday.book import Book
from tradeday.calendar import session_window
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

    def model_orders(self) -> list[tuple[str, str, int, int]]:
        """(symbol, side, qty, tick time ns) of the model's own orders, in the order sent."""
        return [(o.symbol, o.side, o.qty, o.ts) for o in self.orders if o.purpose == "model"]


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
    """Trade ``day`` of ``recording`` (default: the bundled one holding the day).

    ``model`` is a model's params, or their dict, or just a model name; ``symbols``
    default to every symbol the recording has that day; ``risk``/``broker`` are the
    session's ``risk``/``broker`` parameters (simulated only). Parameters are validated
    exactly as a session's are: a bad one raises :class:`~tradeday.config.ConfigError`
    naming the field. ``warmup`` bars go to the model's ``warmup`` before the open.
    """
    day = date.fromisoformat(day) if isinstance(day, str) else day
    window = session_window(day)
    path = Path(recording) if recording is not None else recordings.bundled(day)
    if symbols is None:
        table = recordings.load(path, start_ns=window.open_ns, end_ns=window.close_ns)
        symbols = sorted(set(table.column("symbol").to_pylist()))
    raw_model: Any = {"name": model} if isinstance(model, str) else model
    config = parse_session_config(
        {
            "model": raw_model,
            "symbols": list(symbols),
            "feed": {"recording": str(path)},
            "broker": broker or {},
            "risk": risk or {},
            "close_buffer_minutes": close_buffer_minutes,
        }
    )
    return run_config(config, window, warmup=warmup)


def run_config(
    config: SessionConfig, window: SessionWindow, *, warmup: Sequence[Bar] = ()
) -> BacktestResult:
    """:func:`run` for a whole session parameter object and a market window."""
    if config.broker.kind != "simulated":
        raise ValueError(
            "a backtest trades with the simulated broker; broker.kind must be 'simulated'"
        )
    source = ReplaySource(config.feed, window)
    parts = wiring.build(config, window, run_id=RUN_ID)
    model, engine, broker = parts.model, parts.engine, parts.broker
    source.check(config.symbols, wiring.handled_kinds(model))
    path = source.recording_path()
    if warmup:
        model.warmup(warmup)
    model.on_start(window)
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
    engine.flatten()
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
