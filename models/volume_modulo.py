"""The seed model: trade on the divisibility of each print's size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import ConfigDict, Field

from models.base import NO_ORDERS, Model, ModelParams
from models.registry import register
from tradeday.events import Order, Trade, buy, sell


class VolumeModuloParams(ModelParams):
    """Sell when a trade's size is divisible by the sell modulus, else buy when it is divisible by the buy modulus."""

    model_config = ConfigDict(title="Volume modulo")

    name: Literal["volume_modulo"] = "volume_modulo"
    sell_modulus: int = Field(
        17, ge=2, title="Sell modulus", description="Sell when size % this == 0"
    )
    buy_modulus: int = Field(31, ge=2, title="Buy modulus", description="Buy when size % this == 0")
    quantity: int = Field(5, gt=0, title="Quantity", description="Shares per order")


@register
class VolumeModulo(Model[VolumeModuloParams]):
    params_class = VolumeModuloParams

    def __init__(self, params: VolumeModuloParams, symbols: Sequence[str]) -> None:
        super().__init__(params, symbols)
        self._sell = params.sell_modulus
        self._buy = params.buy_modulus
        self._qty = params.quantity

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        if trade.size % self._sell == 0:
            return (sell(trade.symbol, self._qty),)
        if trade.size % self._buy == 0:
            return (buy(trade.symbol, self._qty),)
        return NO_ORDERS
