"""The model interface (version 1).

A model is a class with a frozen pydantic ``Params`` and pure callbacks. The engine calls
the callbacks on the feed thread, in event order, on tick time; whatever they return is
sent to the risk gate, never straight to a broker. ``position`` is the model's own signed
position in the event's symbol, as the engine's book knows it after every fill so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from tradeday.events import Bar, Order, Quote, SessionWindow, Trade, buy, sell

INTERFACE_VERSION = 1
NO_ORDERS: tuple[Order, ...] = ()


def move(symbol: str, delta: int, tag: str = "") -> Sequence[Order]:
    """The one order that changes a position by ``delta`` (none for 0)."""
    if delta > 0:
        return (buy(symbol, delta, tag=tag),)
    if delta < 0:
        return (sell(symbol, -delta, tag=tag),)
    return NO_ORDERS


class ModelParams(BaseModel):
    """Base of every model's parameters: immutable, and unknown fields are an error.

    Subclasses declare ``name: Literal["their_name"] = "their_name"``; that literal is the
    name users choose the model by in the Prefect UI and the CLI.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str


P = TypeVar("P", bound=ModelParams)


class Model(Generic[P]):
    """Subclass, set ``params_class``, override the callbacks you need, and ``register``."""

    params_class: ClassVar[type[ModelParams]]
    interface_version: ClassVar[int] = INTERFACE_VERSION

    def __init__(self, params: P, symbols: Sequence[str]) -> None:
        self.params = params
        self.symbols = tuple(symbols)

    def warmup(self, history: Sequence[Bar]) -> None:
        """Bars from before the open (recorded in replay, REST history live)."""

    def on_start(self, window: SessionWindow) -> None:
        """The session's open and close, before the first event."""

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        return NO_ORDERS

    def on_quote(self, quote: Quote, position: int) -> Sequence[Order]:
        return NO_ORDERS

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        return NO_ORDERS
