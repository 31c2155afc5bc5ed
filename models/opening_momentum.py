"""Seed 002: bet that the first half hour's move continues, and be flat by the close."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ConfigDict, Field

from models.base import NO_ORDERS, Model, ModelParams, flat_minutes_field, move
from models.registry import register
from tradeday.events import MINUTE_NS, Bar, Order, SessionWindow, Trade


class OpeningMomentumParams(ModelParams):
    """Per symbol: if the price `decision_minutes` after the open is more than `threshold_pct` above the open, buy `position_size`; otherwise sell it short. Flat `flat_minutes` before the close.

    "The price at time T" is the first trade at or after T, or, on bars, the open of the
    first bar starting at or after T. The open price is the price at the session's open.
    """

    model_config = ConfigDict(title="Opening momentum")
    renamed = {"exit_minutes": "flat_minutes"}

    name: Literal["opening_momentum"] = "opening_momentum"
    position_size: int = Field(
        100, gt=0, le=1_000_000, title="Position size", description="Shares held long or short"
    )
    decision_minutes: int = Field(
        30, ge=1, le=360, title="Decide after (minutes)", description="Minutes after the open"
    )
    threshold_pct: float = Field(
        1.0,
        ge=0,
        le=50,
        title="Threshold (%)",
        description="Buy when the price is more than this far above the open, else short",
    )
    flat_minutes: int = flat_minutes_field()


@register
class OpeningMomentum(Model[OpeningMomentumParams]):
    params_class = OpeningMomentumParams

    def __init__(self, params: OpeningMomentumParams, symbols: Sequence[str]) -> None:
        super().__init__(params, symbols)
        self._size = params.position_size
        self._up = 1 + params.threshold_pct / 100
        self._open_ns: int | None = None
        self._decide_ns = 0
        self._flat_ns = 0
        self._open_price: dict[str, float] = {}
        self._decided: set[str] = set()
        self._exited: set[str] = set()

    def on_start(self, window: SessionWindow) -> None:
        self._open_ns = window.open_ns
        self._decide_ns = window.open_ns + self.params.decision_minutes * MINUTE_NS
        self._flat_ns = window.close_ns - self.params.flat_minutes * MINUTE_NS

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        return self._at(trade.symbol, trade.ts, trade.price, position)

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        return self._at(bar.symbol, bar.ts, bar.open, position)

    def _at(self, symbol: str, ts: int, price: float, position: int) -> Sequence[Order]:
        if self._open_ns is None:
            raise RuntimeError("opening_momentum needs on_start(window) before any event")
        if ts < self._open_ns or symbol in self._exited:
            return NO_ORDERS
        if ts >= self._flat_ns:
            self._exited.add(symbol)
            return move(symbol, -position, "exit")
        opened = self._open_price.setdefault(symbol, price)
        if ts < self._decide_ns or symbol in self._decided:
            return NO_ORDERS
        self._decided.add(symbol)
        if price > opened * self._up:
            return move(symbol, self._size - position, "momentum long")
        return move(symbol, -self._size - position, "momentum short")
