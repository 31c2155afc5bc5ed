"""Seeds 003/004: fade prices that stray from their rolling mean, exit when they come back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from models.base import NO_ORDERS, Model, ModelParams, flat_minutes_field, move
from models.registry import register
from models.rolling import Rolling, units
from tradeday.events import MINUTE_NS, Bar, Order, SessionWindow, Trade


class MeanReversionParams(ModelParams):
    """Rolling z-score entry and exit, per symbol, flat before the close.

    Observations are trade prices (on trades) or bar closes (on bars). After each one,
    z = (price - mean) / std over the last `lookback` observations, this one included
    (population std; no signal while the window is not full or std is 0). The target
    position is: flat → long `trade_size` when z ≤ -`entry_z`, short when z ≥ `entry_z`;
    long → flat when z ≥ -`exit_z`; short → flat when z ≤ `exit_z` (an exit and the
    opposite entry can happen on the same observation). A target change sends one order
    for target minus the filled position. From `flat_minutes` before the close: flat,
    and no more entries. `warmup` bars fill the window before the open.
    """

    model_config = ConfigDict(title="Mean reversion")

    name: Literal["mean_reversion"] = "mean_reversion"
    trade_size: int = Field(
        10, gt=0, le=1_000_000, title="Trade size", description="Shares per position"
    )
    lookback: int = Field(
        60, ge=5, le=100_000, title="Lookback", description="Observations in the rolling window"
    )
    entry_z: float = Field(
        2.0, gt=0, le=20, title="Entry z-score", description="Enter when |z| reaches this"
    )
    exit_z: float = Field(
        0.5,
        ge=0,
        le=20,
        title="Exit z-score",
        description="Exit when z is back within this of the mean (less than the entry)",
    )
    flat_minutes: int = flat_minutes_field()

    @field_validator("exit_z")
    @classmethod
    def _inside_entry(cls, value: float, info: ValidationInfo) -> float:
        entry = info.data.get("entry_z")
        if entry is not None and value >= entry:
            raise ValueError(f"must be less than entry_z ({entry})")
        return value


@register
class MeanReversion(Model[MeanReversionParams]):
    params_class = MeanReversionParams

    def __init__(self, params: MeanReversionParams, symbols: Sequence[str]) -> None:
        super().__init__(params, symbols)
        self._size = params.trade_size
        self._entry = params.entry_z
        self._exit = params.exit_z
        self._flat_ns: int | None = None
        self._windows: dict[str, Rolling] = {}
        self._target: dict[str, int] = {}
        self._done: set[str] = set()

    def warmup(self, history: Sequence[Bar]) -> None:
        for bar in history:
            self._window(bar.symbol).push(units(bar.close))

    def on_start(self, window: SessionWindow) -> None:
        self._flat_ns = window.close_ns - self.params.flat_minutes * MINUTE_NS

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        return self._observe(trade.symbol, trade.ts, trade.price, position)

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        return self._observe(bar.symbol, bar.ts, bar.close, position)

    def _window(self, symbol: str) -> Rolling:
        window = self._windows.get(symbol)
        if window is None:
            window = self._windows[symbol] = Rolling(self.params.lookback)
        return window

    def _observe(self, symbol: str, ts: int, price: float, position: int) -> Sequence[Order]:
        if self._flat_ns is None:
            raise RuntimeError("mean_reversion needs on_start(window) before any event")
        if symbol in self._done:
            return NO_ORDERS
        if ts >= self._flat_ns:
            self._done.add(symbol)
            return move(symbol, -position, "close out")
        window = self._window(symbol)
        value = units(price)
        window.push(value)
        if not window.full:
            return NO_ORDERS
        z = window.zscore(value)
        if z is None:
            return NO_ORDERS
        old = target = self._target.get(symbol, 0)
        if (target > 0 and z >= -self._exit) or (target < 0 and z <= self._exit):
            target = 0
        if target == 0:
            if z <= -self._entry:
                target = 1
            elif z >= self._entry:
                target = -1
        if target == old:
            return NO_ORDERS
        self._target[symbol] = target
        tag = ("exit", "long", "short")[target]
        return move(symbol, target * self._size - position, tag)
