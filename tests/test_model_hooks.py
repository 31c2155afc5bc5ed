"""Model interface v2 inside the real engine, risk gate, simulated broker and book: a model
hears its own fills (each part) and refusals, can cancel its working orders, and a flatten
cancels resting orders rather than offsetting them. v1 models are still accepted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pytest

from models import registry
from models.base import NO_ORDERS, Model, ModelParams
from tradeday.book import Book
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.config import RiskLimits
from tradeday.engine import Engine
from tradeday.events import Cancel, Fill, Intent, Order, Trade, buy, sell
from tradeday.risk import RiskGate


class ScriptParams(ModelParams):
    name: Literal["hooks_script"] = "hooks_script"


class Script(Model[ScriptParams]):
    """A test model: scripted intents per tick time, and a log of what the hooks heard."""

    params_class = ScriptParams

    def __init__(self, script: dict[int, Sequence[Intent]]) -> None:
        super().__init__(ScriptParams(), ["A"])
        self.script = script
        self.heard: list[tuple[Any, ...]] = []

    def on_trade(self, trade: Trade, position: int) -> Sequence[Intent]:
        return self.script.pop(trade.ts, NO_ORDERS)


class Hooked(Script):
    take_profit: ClassVar[float] = 1.0

    def on_fill(self, fill: Fill, position: int) -> Sequence[Intent]:
        self.heard.append(
            ("fill", fill.order.tag, fill.qty, fill.price, fill.ts, fill.remaining, position)
        )
        if fill.order.tag == "entry" and not fill.remaining:
            return (sell("A", position, "exit", limit_price=fill.price + self.take_profit),)
        return NO_ORDERS

    def on_reject(self, order: Order, reason: str) -> Sequence[Intent]:
        self.heard.append(("reject", order.tag, order.qty, reason))
        return (order,)  # tries again: refused again, and not reported twice


def engine_for(model: Script, cash: float = 1e6, participation: float | None = None, **risk):
    book = Book(cash)
    limits = RiskLimits(**({"max_order_qty": 1_000} | risk))
    broker = SimulatedBroker(cash, max_participation=participation)
    return Engine("r1", model, broker, RiskGate(limits, book), book, model_name="hooks_script")


def play(engine: Engine, prints: Sequence[tuple[int, float, int]]) -> None:
    for ts, price, size in prints:
        engine.on_events([Trade("A", ts, price, size)])


def orders_of(engine: Engine) -> list[tuple]:
    batch = engine.take_batch()
    rows = {o.client_order_id: o for o in batch.new_orders}
    for update in batch.order_updates:
        rows[update.client_order_id].apply(update)
    return [(o.tag, o.side, o.qty, o.status, o.filled_qty, o.reason) for o in rows.values()]


def test_on_fill_hears_every_part_and_can_place_a_take_profit():
    model = Hooked({1: [buy("A", 10, "entry")]})
    engine = engine_for(model, participation=0.5)
    play(
        engine,
        [(1, 10.0, 1), (2, 10.0, 4), (3, 10.2, 6), (4, 10.4, 10), (5, 10.9, 8), (6, 11.5, 30)],
    )
    assert model.heard == [
        ("fill", "entry", 2, 10.0, 2, 8, 2),
        ("fill", "entry", 3, 10.2, 3, 5, 5),
        ("fill", "entry", 5, 10.4, 4, 0, 10),
        # the take-profit rests at 11.4: nothing at 10.9, then 10 of 15 allowed at 11.5
        ("fill", "exit", 10, 11.4, 6, 0, 0),
    ]
    assert orders_of(engine) == [
        ("entry", "buy", 10, "filled", 10, ""),
        ("exit", "sell", 10, "filled", 10, ""),
    ]
    assert engine.book.open_positions() == {}
    assert engine.book.realized == pytest.approx(10 * 11.4 - (2 * 10.0 + 3 * 10.2 + 5 * 10.4))


def test_on_reject_hears_the_risk_gate_and_the_broker_once_each():
    model = Hooked({1: [buy("A", 6, "big")], 2: [buy("A", 5, "dear")]})
    engine = engine_for(model, cash=40.0, max_order_qty=5)
    play(engine, [(1, 10.0, 1), (2, 10.0, 1), (3, 10.0, 1)])
    assert model.heard == [
        ("reject", "big", 6, "max_order_qty: quantity 6 > 5"),
        (
            "reject",
            "dear",
            5,
            "insufficient buying power: buy 5 A needs 50.00, buying power 40.00",
        ),
    ]
    batch = engine.take_batch()
    # each retry from on_reject was refused again: recorded, not reported back
    assert [(e.qty, e.reason) for e in batch.risk_events] == [
        (6, "max_order_qty: quantity 6 > 5"),
        (6, "max_order_qty: quantity 6 > 5"),
    ]
    assert [(o.tag, o.status) for o in batch.new_orders] == [("dear", "rejected")] * 2


def test_a_model_cancels_its_own_resting_order_by_tag():
    model = Script(
        {
            1: [buy("A", 3, "bid", limit_price=9.0), buy("A", 2, "low", limit_price=8.0)],
            2: [Cancel("A", "other")],  # names nothing: both keep working
            3: [Cancel("A", "bid")],
        }
    )
    engine = engine_for(model)
    play(engine, [(1, 10.0, 1), (2, 10.0, 1), (3, 9.5, 1), (4, 7.5, 1)])
    assert orders_of(engine) == [
        ("bid", "buy", 3, "canceled", 0, "canceled on request"),
        ("low", "buy", 2, "filled", 2, ""),
    ]
    assert engine.book.open_positions() == {"A": 2}
    assert engine.risk.pending == {"A": 0}


def test_flatten_cancels_resting_orders_instead_of_offsetting_them():
    model = Script({1: [buy("A", 5, "in"), buy("A", 10, "dip", limit_price=5.0)]})
    engine = engine_for(model)
    play(engine, [(1, 10.0, 1), (2, 10.0, 1)])
    assert engine.flatten() == {"A": -5}  # not -15: the resting buy is canceled first
    engine.broker.flush(3)
    engine.drain()
    assert engine.book.open_positions() == {}
    assert [(tag, status) for tag, _, _, status, _, _ in orders_of(engine)] == [
        ("in", "filled"),
        ("dip", "canceled"),
        ("flatten", "filled"),
    ]


def test_hooks_stay_silent_once_the_session_is_stopping():
    model = Hooked({1: [buy("A", 1, "entry")]})
    engine = engine_for(model)
    play(engine, [(1, 10.0, 1)])  # sent; fills only at the next event
    engine.flatten()
    engine.broker.flush(2)
    engine.drain()
    assert model.heard == []  # no take-profit sent into a flatten
    assert engine.book.open_positions() == {}


def test_v1_models_still_register_and_unknown_versions_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})

    class OldParams(ModelParams):
        name: Literal["old_one"] = "old_one"

    class Old(Model[OldParams]):
        params_class = OldParams
        interface_version = 1

    class Future(Model[OldParams]):
        params_class = OldParams
        interface_version = 3

    assert registry.register(Old) is Old
    with pytest.raises(TypeError, match="targets model interface v3; this tradeday speaks v1, v2"):
        registry.register(Future)
