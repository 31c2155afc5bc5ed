"""The seed's first live strategy: buy at the close, sell at the next open."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from models.base import NO_ORDERS, Model, ModelParams
from models.registry import register
from tradeday.events import Bar, Intent, SessionWindow, TimeInForce, Trade, buy, sell


class BuyCloseSellOpenParams(ModelParams):
    """Buy `close_shares` in each closing auction and sell them in the next opening auction."""

    model_config = ConfigDict(title="Buy close, sell open")

    name: Literal["buy_close_sell_open"] = "buy_close_sell_open"
    close_shares: int = Field(
        10,
        ge=1,
        le=10_000,
        title="Shares bought at the close",
        description="Per symbol, with a cls order at the session's first event",
    )
    max_overnight_position: int = Field(
        10,
        ge=0,
        le=10_000,
        title="Max position held overnight",
        description="Per symbol; what exceeds it is sold at the session's end",
    )

    @model_validator(mode="after")
    def _holds_what_it_buys(self) -> BuyCloseSellOpenParams:
        if self.max_overnight_position < self.close_shares:
            raise ValueError(
                f"max_overnight_position ({self.max_overnight_position}) must be at least "
                f"close_shares ({self.close_shares}): the position bought at the close is held overnight"
            )
        return self


@register
class BuyCloseSellOpen(Model[BuyCloseSellOpenParams]):
    """A ``cls`` buy at each symbol's first event, an ``opg`` sell of what it carried in.

    The ``cls`` order must reach the broker ten minutes before the close (Alpaca's cutoff)
    and fills at the official close; the ``opg`` sell goes out before the open (at the
    session's start, 09:25 ET in a replay), under Alpaca's 09:28 cutoff.
    """

    params_class = BuyCloseSellOpenParams

    def on_start(self, window: SessionWindow) -> None:
        self.bidding: set[str] = set()

    def before_open(self, window: SessionWindow, positions: Mapping[str, int]) -> Sequence[Intent]:
        return tuple(
            sell(symbol, qty, "open", tif=TimeInForce.OPG)
            for symbol, qty in sorted(positions.items())
            if qty > 0
        )

    def on_trade(self, trade: Trade, position: int) -> Sequence[Intent]:
        return self._bid_at_the_close(trade.symbol)

    def on_bar(self, bar: Bar, position: int) -> Sequence[Intent]:
        return self._bid_at_the_close(bar.symbol)

    def _bid_at_the_close(self, symbol: str) -> Sequence[Intent]:
        if symbol in self.bidding:
            return NO_ORDERS
        self.bidding.add(symbol)
        return (buy(symbol, self.params.close_shares, "close", tif=TimeInForce.CLS),)
