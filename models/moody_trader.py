"""Seed 002: a trader whose mood, and so whose position, follows the time of day."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import ConfigDict, Field, field_validator

from models.base import NO_ORDERS, Model, ModelParams, flat_minutes_field, move
from models.registry import register
from tradeday.events import MINUTE_NS, Bar, Order, SessionWindow, Trade, datetime_to_ns

NEW_YORK = ZoneInfo("America/New_York")
REGULAR_HOURS_HHMM = r"^(09:3[1-9]|09:[45][0-9]|1[0-5]:[0-5][0-9])$"
"""HH:MM after the 09:30 open and before the 16:00 close, exactly what the validator below
accepts: in the JSON schema, so Prefect refuses "25:00" (409) before a run exists."""


class MoodyTraderParams(ModelParams):
    """Long in the morning, short in the afternoon, flat at the end, for every symbol.

    The rule, on tick time, with times of day in New York (America/New_York):

    1. From the open until `mood_swing` the target position is `+lot_size` (cheerful).
    2. From `mood_swing` until `flat_minutes` before the close it is `-lot_size` (grumpy).
    3. From `flat_minutes` before the close on it is 0 (calm).

    On the first event of a symbol in a phase, one order moves the symbol's filled position
    to that phase's target; nothing else is traded. A phase that has no event, or that is
    empty (an early close at or before `mood_swing` plus `flat_minutes`), is skipped.
    """

    model_config = ConfigDict(title="Moody trader")
    renamed = {"calm_minutes": "flat_minutes"}

    name: Literal["moody_trader"] = "moody_trader"
    lot_size: int = Field(
        50, gt=0, le=1_000_000, title="Lot size", description="Shares held long, then short"
    )
    mood_swing: str = Field(
        "12:00",
        pattern=r"^\d\d:\d\d$",
        title="Mood swing (New York time, HH:MM)",
        description="From this time of day on, long turns short",
        json_schema_extra={"pattern": REGULAR_HOURS_HHMM},
    )
    flat_minutes: int = flat_minutes_field()

    @field_validator("mood_swing")
    @classmethod
    def _within_regular_hours(cls, value: str) -> str:
        """A plain string, not ``datetime.time``: Prefect's schema check wants an offset on those."""
        try:
            at = time.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a time of day (HH:MM)") from None
        if not time(9, 30) < at < time(16, 0):
            raise ValueError("must be a New York time of day after 09:30 and before 16:00")
        return value


@register
class MoodyTrader(Model[MoodyTraderParams]):
    params_class = MoodyTraderParams

    def __init__(self, params: MoodyTraderParams, symbols: Sequence[str]) -> None:
        super().__init__(params, symbols)
        self._lot = params.lot_size
        self._starts: tuple[int, int, int] | None = None
        self._phase: dict[str, int] = {}

    def on_start(self, window: SessionWindow) -> None:
        at = time.fromisoformat(self.params.mood_swing)
        swing = datetime.combine(window.day, at, tzinfo=NEW_YORK)
        calm = window.close_ns - self.params.flat_minutes * MINUTE_NS
        self._starts = (window.open_ns, min(datetime_to_ns(swing), calm), calm)

    def on_trade(self, trade: Trade, position: int) -> Sequence[Order]:
        return self._at(trade.symbol, trade.ts, position)

    def on_bar(self, bar: Bar, position: int) -> Sequence[Order]:
        return self._at(bar.symbol, bar.ts, position)

    def _at(self, symbol: str, ts: int, position: int) -> Sequence[Order]:
        if self._starts is None:
            raise RuntimeError("moody_trader needs on_start(window) before any event")
        opened, swing, calm = self._starts
        if ts < opened:
            return NO_ORDERS
        phase = 3 if ts >= calm else 2 if ts >= swing else 1
        if self._phase.get(symbol) == phase:
            return NO_ORDERS
        self._phase[symbol] = phase
        target = (0, self._lot, -self._lot, 0)[phase]
        return move(symbol, target - position, ("", "cheerful", "grumpy", "calm")[phase])
