"""Seeds 003/004: follow the trend when a fast moving average crosses a slow one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from models.base import NO_ORDERS, Model, ModelParams, flat_minutes_field, move
from models.registry import register
from models.rolling import Rolling, units
from tradeday.events import MINUTE_NS, Bar, Order, SessionWindow, Trade


class MaCrossoverParams(ModelParams):
    """Long when the fast moving average crosses above the slow one; short (or flat) when it crosses below. Flat before the close.

    Observations are trade prices (on trades) or bar closes (on bars); the averages are
    simple means of the last `fast_window` and `slow_window` observations of a symbol,
    compared exactly. Once the slow window is full, the sign of fast - slow is the trend
    (equal averages keep the previous trend). The first trend only arms the model; each
    later change of trend is a crossing and moves the filled position to `shares` (up) or
    `-shares` (down; 0 unless `allow_short`) with one order. From `flat_minutes` before
    the close: flat, and no more crossings. `warmup` bars fill the windows.
    """

    model_config = ConfigDict(title="Moving-average crossover")
    renamed = {"close_out_minutes": "flat_minutes"}

    name: Literal["ma_crossover"] = "ma_crossover"
    shares: int = Field(
        10, gt=0, le=1_000_000, title="Shares", description="Position size after a crossing"
    )
    fast_window: int = Field(
        10, ge=1, le=100_000, title="Fast window", description="Observations in the fast average"
    )
    slow_window: int = Field(
        30,
        ge=2,
        le=100_000,
        title="Slow window",
        description="Observations in the slow average (more than the fast window)",
    )
    allow_short: bool = Field(
        True, title="Allow short", description="Go short on a downward crossing, else flat"
    )
    flat_minutes: int = flat_minutes_field()

    @field_validator("slow_window")
    @classmethod
    def _slower_than_fast(cls, value: int, info: ValidationInfo) -> int:
        fast = info.data.get("fast_window")
        if fast is not None and value <= fast:
            raise ValueError(f"must be greater than fast_window ({fast})")
        return value


@register
class MaCrossover(Model[MaCrossoverParams]):
    params_class = MaCrossoverParams

    def __init__(self, params: MaCrossoverParams, symbols: Sequence[str]) -> None:
        super().__init__(params, symbols)
        self._up = params.shares
        self._down = -params.shares if params.allow_short else 0
        self._flat_ns: int | None = None
        self._fast: dict[str, Rolling] = {}
        self._slow: dict[str, Rolling] = {}
        self._trend: dict[str, int] = {}
        self._done: set[str] = set()

    def warmup(self, history: Sequence[Bar]) -> None:
        for bar in history:
            self._push(bar.symbol, units(bar.close))

    def on_start(self, window: SessionWindow) -> None:
        self._flat_ns = window.close_ns - self.params.flat_minutes * MINUTE_NS

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        return self._observe(trade.symbol, trade.ts, trade.price, position)

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        return self._observe(bar.symbol, bar.ts, bar.close, position)

    def _push(self, symbol: str, value: int) -> tuple[Rolling, Rolling]:
        fast = self._fast.get(symbol)
        if fast is None:
            fast = self._fast[symbol] = Rolling(self.params.fast_window)
            self._slow[symbol] = Rolling(self.params.slow_window)
        slow = self._slow[symbol]
        fast.push(value)
        slow.push(value)
        return fast, slow

    def _observe(self, symbol: str, ts: int, price: float, position: int) -> Sequence[Order]:
        if self._flat_ns is None:
            raise RuntimeError("ma_crossover needs on_start(window) before any event")
        if symbol in self._done:
            return NO_ORDERS
        if ts >= self._flat_ns:
            self._done.add(symbol)
            return move(symbol, -position, "close out")
        fast, slow = self._push(symbol, units(price))
        if not slow.full:
            return NO_ORDERS
        # fast mean vs slow mean, compared exactly: fast.sum/f vs slow.sum/s
        diff = fast.sum * slow.size - slow.sum * fast.size
        trend = (diff > 0) - (diff < 0)
        previous = self._trend.get(symbol, 0)
        if trend == 0 or trend == previous:
            return NO_ORDERS
        self._trend[symbol] = trend
        if previous == 0:
            return NO_ORDERS  # the first trend only arms the model
        if trend > 0:
            return move(symbol, self._up - position, "cross up")
        return move(symbol, self._down - position, "cross down")
